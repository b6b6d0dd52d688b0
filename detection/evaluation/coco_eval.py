"""COCO box AP with faster-coco-eval when it is installed, else pycocotools: the same numbers
(tests/detection/evaluation/test_coco_eval.py), faster-coco-eval several times faster."""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import logging
import math
import numbers
import posixpath
import warnings

import numpy as np

from resnet_engine import distributed as dist_utils
from resnet_engine.errors import UserError
from resnet_engine.extras import installed, package_needed

from ..data.image_io import BadImageError

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class DetectionsError(UserError):
    pass


def detections_to_coco(image_id: int, detections: dict, category_ids: list[int]) -> list[dict]:
    """One image's {"boxes" xyxy, "scores", "labels" 1..K} -> COCO result records (xywh)."""
    boxes = detections["boxes"].detach().float().cpu().numpy()
    scores = detections["scores"].detach().float().cpu().numpy()
    labels = detections["labels"].detach().cpu().numpy()
    results = []
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        results.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label) - 1]),
            "bbox": [round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3), round(float(y2 - y1), 3)],
            "score": round(float(score), 5),
        })
    return results


def load_results_file(path: str, gt_images: list[dict] | None = None) -> list[dict]:
    """The COCO results of ``path``, each checked. Records that name their image by file_name instead of
    image_id (tools/infer.py's) are given the id of the image of ``gt_images`` (a COCO json's images)
    whose file_name their path ends with."""
    try:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    except FileNotFoundError:
        raise DetectionsError(f"detections file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DetectionsError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}") from None
    if not isinstance(results, list):
        raise DetectionsError(f"{path}: expected a list of COCO detections [{{image_id, category_id, bbox, score}}]")
    for index, record in enumerate(results):
        problem = detection_record_problem(record)
        if problem:
            raise DetectionsError(f"{path}: detection #{index} {problem}")
    if any("image_id" not in record for record in results):
        attach_image_ids(results, gt_images or [], path)
    return results


def attach_image_ids(results: list[dict], gt_images: list[dict], source: str) -> None:
    """Set the image_id of each record that has a file_name instead: the id of the ground-truth image
    whose file_name (relative to its image folder) is the longest ending of the record's path."""
    ids_by_name = {}
    for image in gt_images:
        ids_by_name.setdefault(normalized_path(str(image["file_name"])), []).append(image["id"])
    size_of = {image["id"]: (image.get("width"), image.get("height")) for image in gt_images}
    matched = {}
    for index, record in enumerate(results):
        if "image_id" in record:
            continue
        if "frame" in record:
            raise DetectionsError(f"{source}: detection #{index} is on frame {record['frame']} of the video "
                                  f"{record['file_name']}: COCO scoring takes detections on images")
        path = record["file_name"]
        if path not in matched:
            matched[path] = image_id_of_file(path, ids_by_name, f"{source}: detection #{index}")
            check_same_frame(record, size_of[matched[path]], f"{source}: detection #{index}")
        record["image_id"] = matched[path]


# What a photo's EXIF orientation does to its stored pixels to show them upright, for orientations 2 to 8
# (1: nothing). 5 to 8 also swap width and height.
EXIF_TURNS = {2: "mirrored left to right", 3: "turned 180 degrees", 4: "mirrored top to bottom",
              5: "mirrored along its main diagonal", 6: "turned 90 degrees clockwise",
              7: "mirrored along its other diagonal", 8: "turned 90 degrees counter-clockwise"}
UPRIGHT_HINT = "tools/infer.py reads photos upright, and COCO annotates the stored pixels; run it with --stored-pixels"


def check_same_frame(record: dict, gt_size: tuple, where: str) -> None:
    """Detections made on other pixels than the ground truth annotates would be scored in another frame.

    The size tells a photo turned by 90 degrees. A mirrored or 180-degree one keeps its size: the EXIF
    orientation that tools/infer.py records ("exif_orientation", absent from older files) tells it."""
    made_on = (record.get("width"), record.get("height"))
    sizes_known = None not in made_on and None not in gt_size and all(gt_size)
    if sizes_known and tuple(made_on) != tuple(gt_size):
        turned = tuple(made_on) == tuple(gt_size)[::-1]
        reason = f" (turned by its EXIF orientation: {UPRIGHT_HINT})" if turned else ""
        raise DetectionsError(f"{where} is for {record['file_name']}, detected in {made_on[0]}x{made_on[1]} pixels, "
                              f"and the ground truth annotates {gt_size[0]}x{gt_size[1]}{reason}: its boxes would be "
                              f"scored in another frame")
    orientation = record.get("exif_orientation")
    if orientation not in EXIF_TURNS:
        return
    stored_size = tuple(made_on)[::-1] if orientation >= 5 else tuple(made_on)
    if sizes_known and stored_size != tuple(gt_size):
        return  # only the upright photo has the json's size: annotated upright (data/coco.py reads it so)
    raise DetectionsError(f"{where} is for {record['file_name']}, detected in its pixels {EXIF_TURNS[orientation]} "
                          f"(EXIF orientation {orientation}: {UPRIGHT_HINT}): its boxes would be scored in another "
                          f"frame")


def normalized_path(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/"))


def image_id_of_file(path: str, ids_by_name: dict[str, list], where: str):
    """The id of the image whose file_name is the longest ending (whole path components) of ``path``."""
    parts = normalized_path(str(path)).split("/")
    for start in range(len(parts)):
        ids = ids_by_name.get("/".join(parts[start:]))
        if ids and len(ids) > 1:
            raise DetectionsError(f"{where} is for {path}, which {len(ids)} images of the ground truth share as "
                                  f"file_name (ids {ids[:3]}): give image_id")
        if ids:
            return ids[0]
    raise DetectionsError(f"{where} is for {path}, whose path ends in no file_name of the ground truth's images "
                          f"(a file_name such as val/0001.png matches /data/coco/val/0001.png): score the images of "
                          f"this json, or give image_id")


def is_finite_number(value) -> bool:
    # json gives int and float: testing them first keeps a million detections fast. bool is an int to
    # Python, but true/false in a results file is a mistake, not a number.
    if type(value) is not float and type(value) is not int:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
    return math.isfinite(value)


def detection_record_problem(record) -> str | None:
    """What is wrong with one COCO result record, as the end of a sentence; None when it is fine.
    A NaN score or box would be ranked and matched by pycocotools all the same, with a wrong AP."""
    if not isinstance(record, dict):
        return "is not an object {image_id, category_id, bbox, score}"
    missing = [k for k in ("category_id", "bbox", "score") if k not in record]
    if "image_id" not in record and "file_name" not in record:
        missing.insert(0, "image_id (or file_name)")
    if missing:
        return f"lacks {', '.join(missing)}"
    bbox = record["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
        return f"has bbox {bbox!r}: give 4 finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return (f"has bbox {bbox!r}, of negative width or height: give [x, y, width, height] (corners "
                "[x1, y1, x2, y2] are another format)")
    if not is_finite_number(record["score"]):
        return f"has score {record['score']!r}: give a finite number (higher is more confident)"
    return None


def check_results_match(coco_gt, results: list[dict], source: str = "detections") -> None:
    unknown_images = sorted({r["image_id"] for r in results} - set(coco_gt.getImgIds()))
    if unknown_images:
        raise DetectionsError(
            f"{source}: {len(unknown_images)} image ids are not in the ground truth (e.g. {unknown_images[:3]}); "
            f"are these detections for another split?")
    unknown_cats = sorted({r["category_id"] for r in results} - set(coco_gt.getCatIds()))
    if unknown_cats:
        raise DetectionsError(f"{source}: category ids {unknown_cats[:5]} are not in the ground truth")


def check_gt_has_objects(gt_dataset: dict, image_ids: list[int]) -> None:
    """Both libraries report AP -1 (undefined) when no scored image has an object: an error here."""
    scored = set(image_ids)
    if not any(not ann.get("iscrowd", 0) and ann["image_id"] in scored for ann in gt_dataset.get("annotations", [])):
        raise DetectionsError(f"no object box in the ground truth of the {len(scored)} scored images: AP is "
                              "undefined (give the objects in the annotation file's 'annotations' list)")


def warn_of_images_without_detections(gt_dataset: dict, results: list[dict], source: str, gt_source: str) -> None:
    """Every image of the ground truth is scored, those without detections with their objects missed: a
    results file made on part of the images (a model's run with test.max_images) scores a far lower AP than
    that run printed. Most images with objects lacking detections is what such a file looks like."""
    image_ids = {image["id"] for image in gt_dataset.get("images", [])}
    with_objects = {ann["image_id"] for ann in gt_dataset.get("annotations", [])
                    if not ann.get("iscrowd", 0) and ann["image_id"] in image_ids}
    undetected = len(with_objects - {record["image_id"] for record in results})
    # No detection at all has a warning of its own (evaluate_detections).
    if results and undetected > len(with_objects) / 2:
        warnings.warn(f"{source}: {undetected} of the {len(with_objects)} images of {gt_source} that hold objects "
                      f"have no detection: made on a subset of the images? every image of --gt is scored, and the "
                      f"objects of those images count as missed (a detections.json of test.max_images=N holds the "
                      f"first N images)", stacklevel=3)


def scorable_copy(gt_dataset: dict) -> dict:
    """A copy of a COCO json's contents that both backends score right.

    * Annotation ids are renumbered 1..N: both libraries look annotations up by id, so two that share an
      id are scored as one box twice, and their matching takes id 0 for "unmatched", so a true positive
      on the annotation of id 0 counts as a false one. Custom files have both (ids counted per image,
      from 0); the scoring never reports an id.
    * A missing "iscrowd" is 0 (pycocotools raises KeyError otherwise).
    * A missing "area" is the box's width x height (pycocotools raises KeyError; faster-coco-eval takes 0,
      which puts every object among the small ones). COCO's own area is the mask's: data/coco.py warns
      when a test json lacks it.
    """
    data = copy.deepcopy(gt_dataset)
    for new_id, ann in enumerate(data.get("annotations", []), start=1):
        ann["id"] = new_id
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return data


def resolve_backend(backend: str) -> str:
    """The scoring backend that ``backend`` names: "auto" is faster_coco_eval when it is installed (the
    same numbers, several times faster), else pycocotools."""
    if backend != "auto":
        return backend
    return "faster_coco_eval" if installed("faster_coco_eval") else "pycocotools"


def coco_api(backend: str):
    """The COCO and COCOeval classes of a resolved backend."""
    if backend == "faster_coco_eval":
        if not installed("faster_coco_eval"):
            raise package_needed("faster_coco_eval", "test.eval_backend=faster_coco_eval")
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def evaluate_detections(gt_dataset: dict, results: list[dict], backend: str = "auto",
                        image_ids: list[int] | None = None, source: str = "detections") -> dict:
    """Score COCO-format ``results`` against the ``gt_dataset`` dict (a COCO json's contents).

    Returns {"bbox": {AP, AP50, ... ARl} in percent, "per_category": {name: AP}, "summary": text,
    "backend": the library that scored them}.
    """
    chosen, backend = backend, resolve_backend(backend)
    COCO, COCOeval = coco_api(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = scorable_copy(gt_dataset)
        coco_gt.createIndex()
    check_results_match(coco_gt, results, source)
    check_gt_has_objects(gt_dataset, image_ids if image_ids is not None else coco_gt.getImgIds())
    # Logged once the input is known good, so that an error stays the only line of a failed run.
    logger.info("COCO scoring backend: %s (test.eval_backend=%s)", backend, chosen)
    if not results:
        logger.warning("%s: no detections at all; every AP and AR is 0 (n/a where there is no object to find)",
                       source)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else no_results(COCO, coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if backend == "faster_coco_eval":
            evaluator.print_function = print
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # Both libraries give -1 for a metric without objects to find (APs when no object is small): NaN here,
    # "n/a" in the printed table and null in metrics.json, never a number that could be read as a score.
    stats = [float(s) * 100 if s > -1 else float("nan") for s in evaluator.stats[: len(STAT_NAMES)]]
    return {
        "bbox": dict(zip(STAT_NAMES, stats)),
        "per_category": per_category_ap(evaluator, coco_gt),
        "summary": "\n".join(line.replace("= -1.000", "=    n/a") for line in text.getvalue().splitlines()
                             if line.startswith(" Average")),
        "precision": evaluator.eval["precision"],
        "backend": backend,
    }


def no_results(COCO, coco_gt):
    """An empty results set on ``coco_gt``'s images, for the libraries to score as they score detections
    that find nothing: AP 0 where there are objects to find, -1 (undefined) where there are none (APs
    without small objects, a category without ground truth). pycocotools' loadRes fails on an empty list."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def category_names(categories: list[dict]) -> dict[int, str]:
    """{category id: the name its metrics are reported under}: its name, or its id when it has none. Names
    that several categories share get their ids added (person (id 1), person (id 7)), so that no row of a
    per-class table overwrites another."""
    names = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    counts = collections.Counter(names.values())
    return {cat_id: (f"{name} (id {cat_id})" if counts[name] > 1 else name) for cat_id, name in names.items()}


def per_category_ap(evaluator, coco_gt) -> dict[str, float]:
    """AP@[.5:.95] per category (all areas, 100 detections), in percent; NaN when a class has no GT."""
    precision = evaluator.eval["precision"]  # (iou, recall, category, area, max_dets)
    names = category_names(list(coco_gt.cats.values()))
    table = {}
    for index, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        table[names[cat_id]] = float(np.mean(values) * 100) if values.size else float("nan")
    return table


def format_results(metrics: dict) -> str:
    """The 12 numbers and the per-category table as text."""
    bbox = metrics["bbox"]
    lines = ["bbox: " + "  ".join(f"{k} {percent_or_na(bbox[k])}" for k in STAT_NAMES)]
    if metrics.get("per_category"):
        width = max(len(n) for n in metrics["per_category"])
        lines.append(f"{'category':<{width}}  AP")
        for name, ap in metrics["per_category"].items():
            lines.append(f"{name:<{width}}  {percent_or_na(ap)}")
    return "\n".join(lines)


def percent_or_na(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def metrics_for_json(metrics: dict) -> dict:
    """The part of the metrics written to metrics.json (an undefined metric as null)."""
    data = {"bbox": {k: (round(v, 4) if v == v else None) for k, v in metrics["bbox"].items()},
            "per_category": {k: (round(v, 4) if v == v else None)
                             for k, v in metrics.get("per_category", {}).items()}}
    data.update({k: metrics[k] for k in ("num_images", "skipped_images", "backend") if k in metrics})
    return data


def gather_test_results(results: list[dict], unreadable: list[tuple[int, str]],
                        image_ids: list[int]) -> tuple[list[dict], list[tuple[int, str]]]:
    """Every process's detections on the main process (an empty list on the others), in the order of
    the test set's ``image_ids`` whatever the number of processes; the unreadable images ((image id,
    path), sorted) on every process.

    The detections, the bulk, go to the main process alone, one process's share at a time. When no
    test image could be read, every process raises the same error."""
    all_unreadable = sorted({item for part in dist_utils.all_gather_objects(unreadable) for item in part})
    if len(all_unreadable) >= len(image_ids):
        raise BadImageError(f"none of the {len(image_ids)} test images can be read, e.g. {all_unreadable[0][1]}")
    all_results = dist_utils.concatenate_on_main(results)
    # Each process ran every world_size-th image: put the images back in the test set's order. The sort
    # is stable, so each image keeps its detections in the order its model gave them.
    position = {image_id: index for index, image_id in enumerate(image_ids)}
    all_results.sort(key=lambda record: position[record["image_id"]])
    return all_results, all_unreadable


def images_to_score(image_ids: list[int], unreadable: list[tuple[int, str]]) -> list[int]:
    """The test images that went through the model: ``image_ids`` less the unreadable ones, which one
    warning names (the scoring of every metric leaves them out rather than count their objects missed)."""
    skipped_ids = {image_id for image_id, _ in unreadable}
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable test images were skipped and left out of the evaluation: "
                      + ", ".join(path for _, path in unreadable), stacklevel=3)
    return [image_id for image_id in image_ids if image_id not in skipped_ids]


def score_test_set(gt_dataset: dict, image_ids: list[int], results: list[dict], unreadable: list[tuple[int, str]],
                   backend: str = "auto", source: str = "detections") -> dict:
    """evaluate_detections over the test images that went through the model.

    Unreadable images are left out of the COCO evaluation (their ground truth would count as missed),
    named in one warning and counted: "num_images" is the number evaluated, "skipped_images" the rest."""
    evaluated = images_to_score(image_ids, unreadable)
    metrics = evaluate_detections(gt_dataset, results, backend, evaluated, source)
    metrics.update(num_images=len(evaluated), skipped_images=len(unreadable))
    return metrics
