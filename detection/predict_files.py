"""Detections for a list of image files: predictions.json plus annotated copies of the images."""

from __future__ import annotations

import json
import logging
import os
import warnings

from resnet_engine.errors import UserError

from .data.image_io import BadImageError
from .predictor import Predictor
from .visualize import draw_detections, write_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: list[str]) -> list[str]:
    """Files named directly, plus the images inside named folders (sorted, not recursive); a file
    named twice is listed once."""
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
    unique = {os.path.realpath(path): path for path in reversed(paths)}
    return [path for path in paths if unique[os.path.realpath(path)] is path]


def relative_names(paths: list[str]) -> dict[str, str]:
    """Each image's path below the deepest folder holding them all, so that a/x.jpg and b/x.jpg keep
    apart when their annotated copies are written into one folder."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])
    return {path: os.path.relpath(os.path.abspath(path), root) for path in paths}


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


class PredictionsWriter:
    """A JSON list written one image at a time: what was predicted is on disk however the run ends.

    Each image's records are flushed as they come; the closing bracket is written on any exit from
    the ``with`` block (an error, Ctrl-C, SIGTERM under ``resnet_engine.cli.sigterm_as_interrupt``). Only a
    process killed outright leaves the list unclosed, every record before the cut still complete.
    """

    def __init__(self, path: str):
        self.path = path
        self.count = 0

    def __enter__(self) -> PredictionsWriter:
        self.handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.handle.write("[")
        return self

    def write(self, records: list[dict]) -> None:
        for record in records:
            self.handle.write(("\n" if self.count == 0 else ",\n") + json.dumps(record))
            self.count += 1
        self.handle.flush()

    def __exit__(self, *exc_info) -> None:
        self.handle.write("\n]\n")
        self.handle.close()


def infer_files(cfg, weights: str, inputs: list[str], out_dir: str, vis_thresh: float | None = 0.5,
                device: str = "cpu", max_images: int | None = None) -> list[dict]:
    """Run the detector on every image; returns the predictions, written to OUT/predictions.json as
    they are made. Unreadable images and images too thin to detect in are skipped and counted."""
    paths = list_images(inputs)[:max_images]
    names = relative_names(paths)
    predictor = Predictor(cfg, weights, device)
    os.makedirs(out_dir, exist_ok=True)
    vis_dir = os.path.join(out_dir, "vis")
    out_file = os.path.join(out_dir, "predictions.json")
    predictions, skipped, current = [], [], None
    try:
        with PredictionsWriter(out_file) as writer:
            for path in paths:
                current = path
                try:
                    image, detections = predictor.predict_file(path)
                except BadImageError as error:
                    warnings.warn(f"skipping: {error}", stacklevel=2)
                    skipped.append(path)
                    continue
                records = predictions_for_file(path, detections, predictor.class_names)
                writer.write(records)
                predictions.extend(records)
                if vis_thresh is not None:
                    write_annotated(os.path.join(vis_dir, names[path]), image, detections, vis_thresh,
                                    predictor.class_names)
    except BaseException:
        logger.warning("stopped at image %d of %d (%s); the %d detections of the images before it are in %s",
                       paths.index(current) + 1 if current else 0, len(paths), current, len(predictions), out_file)
        raise
    finally:
        if skipped:
            warnings.warn(f"{len(skipped)} of {len(paths)} images were skipped (unreadable, or too thin to "
                          f"detect in), e.g. {skipped[0]}", stacklevel=2)
    logger.info("%d detections on %d images written to %s%s", len(predictions), len(paths) - len(skipped), out_file,
                f"; annotated images in {vis_dir}" if vis_thresh is not None else "")
    return predictions


def write_annotated(path: str, image, detections: dict, vis_thresh: float, class_names: list[str]) -> None:
    keep = detections["scores"] >= vis_thresh
    drawn = draw_detections(image, detections["boxes"][keep], detections["labels"][keep],
                            detections["scores"][keep], class_names)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_rgb(path, drawn)
