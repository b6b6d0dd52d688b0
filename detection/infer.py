"""Detections for a list of image files: predictions.json plus annotated copies of the images."""

from __future__ import annotations

import json
import logging
import os
import warnings

from engine.errors import UserError

from .data.image_io import BadImageError
from .predictor import Predictor
from .visualize import draw_detections, write_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: list[str]) -> list[str]:
    """Files named directly, plus the images inside named folders (sorted, not recursive)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(sorted(os.path.join(item, name) for name in os.listdir(item)
                                if name.lower().endswith(IMAGE_SUFFIXES)))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"input not found: {item} (give image files or folders of images)")
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return paths


def predictions_for_file(path: str, detections: dict, names: list[str]) -> list[dict]:
    """COCO-style records (bbox as x, y, w, h) keyed by the file instead of an image id."""
    records = []
    for (x1, y1, x2, y2), score, label, category in zip(detections["boxes"], detections["scores"],
                                                         detections["labels"], detections["category_ids"]):
        records.append({"file_name": path, "category_id": int(category), "category_name": names[int(label) - 1],
                        "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2),
                                 round(float(y2 - y1), 2)],
                        "score": round(float(score), 5)})
    return records


def infer_files(cfg, weights: str, inputs: list[str], out_dir: str, vis_thresh: float | None = 0.5,
                device: str = "cpu", max_images: int | None = None) -> list[dict]:
    """Run the detector on every image; returns (and writes) the predictions."""
    paths = list_images(inputs)[:max_images]
    predictor = Predictor(cfg, weights, device)
    os.makedirs(out_dir, exist_ok=True)
    vis_dir = os.path.join(out_dir, "vis")
    if vis_thresh is not None:
        os.makedirs(vis_dir, exist_ok=True)
    predictions, skipped = [], 0
    for path in paths:
        try:
            image, detections = predictor.predict_file(path)
        except BadImageError as error:
            warnings.warn(f"skipping: {error}", stacklevel=2)
            skipped += 1
            continue
        predictions.extend(predictions_for_file(path, detections, predictor.class_names))
        if vis_thresh is not None:
            keep = detections["scores"] >= vis_thresh
            drawn = draw_detections(image, detections["boxes"][keep], detections["labels"][keep],
                                    detections["scores"][keep], predictor.class_names)
            stem = os.path.splitext(os.path.basename(path))[0]
            write_rgb(os.path.join(vis_dir, f"{stem}.jpg"), drawn)
    out_file = os.path.join(out_dir, "predictions.json")
    with open(out_file + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(predictions, handle)
    os.replace(out_file + ".tmp", out_file)
    logger.info("%d detections on %d images written to %s%s%s", len(predictions), len(paths) - skipped, out_file,
                f"; annotated images in {vis_dir}" if vis_thresh is not None else "",
                f"; {skipped} unreadable images skipped" if skipped else "")
    return predictions
