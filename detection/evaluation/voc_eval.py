"""The PASCAL VOC detection metric, and the per-class result files of the VOC evaluation server.

The rules are those of the devkit's VOCevaldet.m and VOCap.m (VOC2007 and VOC2012 devkits), which
py-faster-rcnn's lib/datasets/voc_eval.py follows too, per class:

- A ground-truth box and a detection overlap by intersection over union with the devkit's pixel
  convention: a box [x1, y1, x2, y2] holds the pixels x1..x2 included, so its width is x2 - x1 + 1.
  Boxes that do not intersect (width or height of the intersection <= 0) are not candidates.
- Detections are taken by decreasing score (ties in their given order: MATLAB's sort is stable). Each
  goes to the ground-truth box of its image it overlaps most (the first of equal overlaps). With an
  overlap >= 0.5: a difficult box makes it neither a true nor a false positive; a box not yet taken
  makes it a true positive and takes the box; a box already taken makes it a false positive (a
  duplicate). Below 0.5 it is a false positive.
- Recall is the true positives over the objects that are not difficult; precision is the true
  positives over the detections counted so far (0 before the first one is counted, where the devkit
  divides 0 by 0 and MATLAB's max skips the NaN).
- AP: "voc2007" averages, over the 11 recalls 0, 0.1, ..., 1 (as MATLAB's 0:0.1:1 holds them, which
  py-faster-rcnn's voc_eval.py does not: at a recall of exactly 0.6 or 0.7 it gives less), the highest
  precision at a recall at least that high (0 when no recall reaches it); "voc2010" (VOC2010 and later) is the area under the
  precision envelope: precision made non-increasing from the right, summed over the steps of recall.

A class without any non-difficult object has no defined AP (the devkit divides by zero): it is
reported as NaN, named in a warning, and left out of the mean.

Boxes here are in the 0-based indices of detection/data/voc.py ([xmin - 1, ..., ymax - 1] of the XML);
COCO-format records give them as [x1, y1, x2 - x1, y2 - y1]. A COCO json scored with this metric has
its crowd regions taken as difficult boxes.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .coco_eval import DetectionsError, category_names, images_to_score

logger = logging.getLogger(__name__)

VOC_METRICS = ("voc2007", "voc2010")
IOU_THRESHOLD = 0.5  # VOCopts.minoverlap


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """MATLAB's ``start:step:stop``, which VOCevaldet's ``for t=0:0.1:1`` iterates: the first half of the
    points counted up from ``start``, the second half down from ``stop``. So 0:0.1:1 holds 0.6 and 0.7
    exactly, where k * 0.1 (py-faster-rcnn's np.arange) gives 0.6000000000000001 and 0.7000000000000001,
    above a recall of exactly 3/5 or 7/10; both give 0.30000000000000004 for the fourth point."""
    count = int(round((stop - start) / step))
    half = count // 2
    return np.array([start + k * step if k <= half else stop - (count - k) * step for k in range(count + 1)])


VOC2007_RECALL_POINTS = matlab_colon(0.0, 0.1, 1.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str) -> float:
    """The AP of a precision-recall curve (one point per detection, by decreasing score)."""
    if metric == "voc2007":
        points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in VOC2007_RECALL_POINTS]
        return float(np.mean(points))
    recall = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def inclusive_iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (n, 4) boxes [x1, y1, x2, y2] that hold the pixels x1..x2 included (the devkits'
    width x2 - x1 + 1: VOC, ImageNet DET, ILSVRC localization's compute_overlap.m); 0 where they do not
    intersect. An inverted box intersects nothing, so the union of intersecting boxes is positive."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    width = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    height = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    intersect = (width > 0) & (height > 0)
    intersection = np.where(intersect, width * height, 0.0)
    union = ((a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1) + (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
             - intersection)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(intersect, intersection / union, 0.0)


def overlaps(box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box`` with each of ``gt_boxes`` (:func:`inclusive_iou_rows`), -inf for the boxes it does
    not intersect (the devkit's starting ovmax: no candidate)."""
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    iou = inclusive_iou_rows(np.broadcast_to(np.asarray(box, np.float64), gt_boxes.shape), gt_boxes)
    return np.where(iou > 0, iou, -np.inf)


@dataclass
class ImageTruth:
    """The ground truth of one class in one image."""

    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2
    difficult: np.ndarray  # (N,) bool

    def __post_init__(self):
        self.taken = np.zeros(len(self.boxes), dtype=bool)


def true_and_false_positives(truth: dict[int, ImageTruth], image_ids: list[int], scores: np.ndarray,
                             boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each detection (its image, score and box) marked true positive, false positive or neither."""
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, index in enumerate(order):
        gt = truth.get(image_ids[index])
        best, match = -np.inf, -1
        if gt is not None and len(gt.boxes):
            iou = overlaps(boxes[index], gt.boxes)
            match = int(np.argmax(iou))
            best = iou[match]
        if best < IOU_THRESHOLD:
            fp[rank] = 1
        elif not gt.difficult[match]:
            if gt.taken[match]:
                fp[rank] = 1  # a duplicate detection of an object already found
            else:
                tp[rank] = 1
                gt.taken[match] = True
    return tp, fp


def class_ap(truth: dict[int, ImageTruth], detections: list[dict], metric: str) -> float:
    """The AP of one class from its ground truth by image and its COCO-format detections; NaN without
    any non-difficult object."""
    positives = sum(int(np.sum(~gt.difficult)) for gt in truth.values())
    if positives == 0:
        return math.nan
    if not detections:
        return 0.0
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    boxes = np.array([corners(d["bbox"]) for d in detections], dtype=np.float64)
    tp, fp = true_and_false_positives(truth, [d["image_id"] for d in detections], scores, boxes)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, metric)


def corners(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def ground_truth_by_class(gt_dataset: dict, image_ids: set[int]) -> dict[int, dict[int, ImageTruth]]:
    """{category id: {image id: ImageTruth}} of the scored images; difficult objects (and COCO crowd
    regions) marked."""
    grouped: dict[int, dict[int, list]] = {c["id"]: {} for c in gt_dataset["categories"]}
    for ann in gt_dataset.get("annotations", []):
        if ann["image_id"] in image_ids and ann["category_id"] in grouped:
            difficult = bool(ann.get("difficult", ann.get("iscrowd", 0)))
            grouped[ann["category_id"]].setdefault(ann["image_id"], []).append((corners(ann["bbox"]), difficult))
    return {category: {image: ImageTruth(np.array([b for b, _ in objs], dtype=np.float64).reshape(-1, 4),
                                         np.array([d for _, d in objs], dtype=bool))
                       for image, objs in by_image.items()}
            for category, by_image in grouped.items()}


def evaluate_voc(gt_dataset: dict, results: list[dict], metric: str = "voc2007",
                 image_ids: list[int] | None = None, source: str = "detections") -> dict:
    """Score COCO-format ``results`` against the ``gt_dataset`` dict with the VOC metric ``metric``.

    Returns {"voc": {"mAP": percent}, "per_category": {name: AP percent, NaN when undefined},
    "summary": text}; detections of images outside ``image_ids`` (default: all of the ground truth's)
    are not scored."""
    if metric not in VOC_METRICS:
        raise ValueError(f"metric {metric!r} is not one of {VOC_METRICS}")
    return per_class_metrics(gt_dataset, results, image_ids, source, "voc", f"VOC {metric[3:]} metric, AP at IoU "
                             f"{IOU_THRESHOLD}", lambda truth, found: class_ap(truth, found, metric),
                             objects_note=" (difficult ones aside)")


def per_class_metrics(gt_dataset: dict, results: list[dict], image_ids: list[int] | None, source: str, section: str,
                      title: str, score_class, objects_note: str = "") -> dict:
    """The metrics of an AP-per-class rule (the VOC and the ImageNet DET metrics): ``score_class(truth,
    detections)`` gives one class's AP as a fraction, NaN when the scored images hold no object of it to
    find (``objects_note`` says which objects count); section/mAP is the mean over the other classes."""
    known_images = {image["id"] for image in gt_dataset["images"]}
    scored = set(image_ids) if image_ids is not None else known_images
    check_result_ids(results, known_images, {c["id"] for c in gt_dataset["categories"]}, source)
    truth = ground_truth_by_class(gt_dataset, scored)
    by_class: dict[int, list[dict]] = {category: [] for category in truth}
    for record in results:
        if record["image_id"] in scored:
            by_class[record["category_id"]].append(record)
    names = category_names(gt_dataset["categories"])
    per_category = {names[c]: score_class(truth[c], by_class[c]) * 100 for c in sorted(truth)}
    defined = [ap for ap in per_category.values() if not math.isnan(ap)]
    if not defined:
        raise DetectionsError(f"no object in the ground truth of the {len(scored)} scored images{objects_note}: "
                              f"the {section.upper()} AP is undefined")
    undefined = [name for name, ap in per_category.items() if math.isnan(ap)]
    if undefined:
        warnings.warn(f"{source}: no object of {', '.join(undefined)} in the scored images{objects_note}: their AP "
                      "is undefined and left out of the mAP", stacklevel=3)
    mean = float(np.mean(defined))
    return {section: {"mAP": mean}, "per_category": per_category, "summary": per_class_summary(title, mean, per_category)}


def check_result_ids(results: list[dict], image_ids: set[int], category_ids: set[int], source: str) -> None:
    """Detections of images or categories that the ground truth lacks are an error, as in the devkit."""
    unknown_images = sorted({r["image_id"] for r in results} - image_ids)
    if unknown_images:
        raise DetectionsError(f"{source}: {len(unknown_images)} image ids are not in the ground truth (e.g. "
                              f"{unknown_images[:3]}); are these detections for another split?")
    unknown_categories = sorted({r["category_id"] for r in results} - category_ids)
    if unknown_categories:
        raise DetectionsError(f"{source}: category ids {unknown_categories[:5]} are not in the ground truth")


def per_class_summary(title: str, mean: float, per_category: dict[str, float]) -> str:
    width = max(len(name) for name in per_category)
    lines = [f"{title}: mAP {mean:.2f}"]
    lines += [f"{name:<{width}}  {'n/a' if math.isnan(ap) else f'{ap:.2f}'}" for name, ap in per_category.items()]
    return "\n".join(lines)


def per_class_metrics_for_json(section: str, metrics: dict) -> dict:
    """The part of per-class AP metrics written to metrics.json (NaN as null)."""
    data = {section: {"mAP": round(metrics[section]["mAP"], 4)},
            "per_category": {k: (None if math.isnan(v) else round(v, 4)) for k, v in metrics["per_category"].items()}}
    data.update({k: metrics[k] for k in ("num_images", "skipped_images", "results_file") if k in metrics})
    return data


def voc_metrics_for_json(metrics: dict) -> dict:
    return per_class_metrics_for_json("voc", metrics)


def image_identifier(image: dict) -> tuple[str, str, str]:
    """(VOC year, image set, image id) of a ground-truth image; the file name's stem for a COCO image."""
    if "voc_id" in image:
        return image["voc_year"], image["voc_set"], image["voc_id"]
    return "", "", os.path.splitext(os.path.basename(str(image["file_name"])))[0]


def write_voc_results(gt_dataset: dict, results: list[dict], out_dir: str, competition: str = "comp4") -> list[str]:
    """The detections as the VOC evaluation server takes them: for each image set and class,
    ``out_dir/results/VOC<year>/Main/<competition>_det_<set>_<class>.txt`` with one line
    ``<image id> <score> <xmin> <ymin> <xmax> <ymax>`` per detection, in the devkit's 1-based pixels
    (our 0-based boxes plus 1, as py-faster-rcnn writes them). comp4: trained on data beyond VOC's.
    Every class gets a file, empty when it has no detection. Returns the paths written."""
    identity = {image["id"]: image_identifier(image) for image in gt_dataset["images"]}
    names = category_names(gt_dataset["categories"])
    lines: dict[tuple[str, str, str], list[str]] = {}
    for year, image_set, _ in set(identity.values()):
        for name in names.values():
            lines[(year, image_set, name)] = []
    for record in sorted(results, key=lambda r: -r["score"]):
        year, image_set, voc_id = identity[record["image_id"]]
        x1, y1, x2, y2 = corners(record["bbox"])
        lines[(year, image_set, names[record["category_id"]])].append(
            f"{voc_id} {record['score']:.6f} {x1 + 1:.1f} {y1 + 1:.1f} {x2 + 1:.1f} {y2 + 1:.1f}")
    paths = []
    for (year, image_set, name), entries in sorted(lines.items()):
        folder = os.path.join(out_dir, "results", f"VOC{year}", "Main")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{competition}_det_{image_set or 'test'}_{name}.txt")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in entries))
        paths.append(path)
    return paths


def score_voc_test_set(gt_dataset: dict, image_ids: list[int], results: list[dict],
                       unreadable: list[tuple[int, str]], metric: str, out_dir: str,
                       source: str = "detections") -> dict:
    """The VOC evaluation of a test set's detections: the server's per-class files written to
    ``out_dir``, then the VOC metric over the images that went through the model, unless the set has
    no annotations (VOC2012 test), which the server alone scores.

    Unreadable images are left out of the score, named in one warning and counted: "num_images" is
    the number evaluated, "skipped_images" the rest."""
    paths = write_voc_results(gt_dataset, results, out_dir)
    evaluated = images_to_score(image_ids, unreadable)
    counts = {"num_images": len(evaluated), "skipped_images": len(unreadable)}
    results_dir = os.path.dirname(paths[0]) if paths else out_dir
    if "annotations" not in gt_dataset:
        print(f"the test set has no annotations, so nothing is scored here: {len(results)} detections of "
              f"{len(evaluated)} images written to {len(paths)} files in {results_dir}, for the VOC evaluation server")
        return {"results_dir": results_dir, **counts}
    metrics = evaluate_voc(gt_dataset, results, metric, evaluated, source)
    logger.info("VOC result files for the evaluation server written to %s", results_dir)
    return {**metrics, **counts}
