"""The ImageNet DET metric (ILSVRC detection): AP per class with a size-dependent IoU threshold.

The rules follow the ILSVRC devkit's evaluation/eval_detection.m (the version read is the ILSVRC2014
devkit's, whose defaults name the 2014 files; the file says it is derived from the PASCAL devkit's
VOCevaldet.m, and it computes the AP with VOCap.m):

- A ground-truth box of width w and height h, in the devkit's pixel convention (a box [x1, y1, x2, y2]
  holds the pixels x1..x2 included, so w = x2 - x1 + 1), is found by a detection whose IoU with it is
  at least min(0.5, w * h / ((w + 10) * (h + 10))): objects under about 50 pixels a side need less
  than 0.5 (the devkit's ``pixelTolerance = 10``; its code names the height gt_w and the width gt_h,
  which the symmetric formula does not notice).
- In each image, a class's detections are taken by decreasing score (ties in their given order). Each
  goes to the object, among the objects of its class not yet found, whose IoU with it is the highest
  of those at or above their own threshold: a true positive, and the object is found. Otherwise it is
  a false positive. Unlike VOC, a second detection of a found object may still find another object
  it overlaps enough; a detection that only overlaps found objects is a false positive (a duplicate).
- Every ground-truth box counts: the DET annotations have no difficult objects, so difficult flags
  (and COCO crowd regions) are not read here.
- Precision and recall over the class's detections sorted by decreasing score over all images (ties:
  by image, then in the order above), and the AP is VOCap.m's area under the precision envelope, the
  "voc2010" AP of voc_eval.py. The mAP is the mean over the classes that have objects; a class without
  any has no AP: NaN, named in a warning, left out of the mean.

Not reproduced: the devkit's optional blacklist of validation image/class pairs, whose detections it
ignores and whose objects it does not count. Here every object and detection of the scored images
counts, so a score on val can differ slightly from the devkit's run with its blacklist.

Boxes are those of detection/data/imagenet_det.py: COCO [x, y, w, h] with x + w the last column, as
voc_eval.py reads them.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from .coco_eval import images_to_score
from .voc_eval import (
    ImageTruth,
    corners,
    overlaps,
    per_class_metrics,
    per_class_metrics_for_json,
    voc_ap,
)

logger = logging.getLogger(__name__)

METRIC = "imagenet_det"
DEFAULT_IOU = 0.5  # eval_detection.m's defaultIOUthr
PIXEL_TOLERANCE = 10  # eval_detection.m's pixelTolerance
RESULTS_FILE = "det_results.txt"


def det_thresholds(boxes: np.ndarray) -> np.ndarray:
    """The IoU each ground-truth box (N, 4 corners, pixels included) needs: min(0.5, wh / ((w+10)(h+10)))."""
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    return np.minimum(DEFAULT_IOU, width * height / ((width + PIXEL_TOLERANCE) * (height + PIXEL_TOLERANCE)))


def match_detection(gt: ImageTruth, thresholds: np.ndarray, box: np.ndarray) -> bool:
    """Whether ``box`` finds an object of ``gt`` not found yet (marking it found): the one of highest IoU
    among those at or above their own threshold."""
    iou = overlaps(box, gt.boxes)  # the devkit's +1 in widths; -inf where they do not intersect
    candidates = (iou >= thresholds) & ~gt.taken
    if not candidates.any():
        return False
    gt.taken[int(np.argmax(np.where(candidates, iou, -np.inf)))] = True
    return True


def det_true_positives(truth: dict[int, ImageTruth], image_ids: np.ndarray, scores: np.ndarray,
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order of one class's detections for the precision curve (decreasing score, then image id, then
    given order) and whether each, in that order, is a true positive."""
    order = np.lexsort((np.arange(len(scores)), image_ids, -scores))
    thresholds = {image: det_thresholds(gt.boxes) for image, gt in truth.items()}
    found = np.zeros(len(order), dtype=bool)
    for rank, index in enumerate(order):
        gt = truth.get(int(image_ids[index]))
        if gt is not None and len(gt.boxes):
            found[rank] = match_detection(gt, thresholds[int(image_ids[index])], boxes[index])
    return order, found


def det_class_ap(truth: dict[int, ImageTruth], detections: list[dict]) -> float:
    """The DET AP of one class from its ground truth by image and its COCO-format detections; NaN without
    any object."""
    positives = sum(len(gt.boxes) for gt in truth.values())
    if positives == 0:
        return math.nan
    if not detections:
        return 0.0
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    boxes = np.array([corners(d["bbox"]) for d in detections], dtype=np.float64)
    image_ids = np.array([d["image_id"] for d in detections])
    _, found = det_true_positives(truth, image_ids, scores, boxes)
    tp = np.cumsum(found)
    recall = tp / positives
    precision = tp / np.arange(1, len(found) + 1)
    return voc_ap(recall, precision, "voc2010")


def evaluate_det(gt_dataset: dict, results: list[dict], image_ids: list[int] | None = None,
                 source: str = "detections") -> dict:
    """Score COCO-format ``results`` against the ``gt_dataset`` dict with the ImageNet DET metric.

    Returns {"det": {"mAP": percent}, "per_category": {name: AP percent, NaN when undefined}, "summary":
    text}; detections of images outside ``image_ids`` (default: all of the ground truth's) are not scored."""
    return per_class_metrics(gt_dataset, results, image_ids, source, "det",
                             "ImageNet DET metric, AP at IoU min(0.5, wh/((w+10)(h+10)))", det_class_ap)


def det_metrics_for_json(metrics: dict) -> dict:
    return per_class_metrics_for_json("det", metrics)


# Why a set gets no results file when it is not one of the devkit's val or test lists (a train list
# tested on): the server scores those lists only, so this one is not worth a warning.
NO_IMAGE_INDEX = "its lists give no image index"


def results_file_problem(gt_dataset: dict) -> str | None:
    """Why the devkit's results file cannot be written for this set (None when it can)."""
    if any(image.get("det_index") is None for image in gt_dataset["images"]):
        return NO_IMAGE_INDEX
    if any(category.get("det_id") is None for category in gt_dataset["categories"]):
        return ("its classes are the annotations' synsets sorted, not numbered as map_det.txt numbers them "
                "(set data.test.names=map_det.txt)")
    return None


def write_det_results(gt_dataset: dict, results: list[dict], path: str) -> str | None:
    """The detections as eval_detection.m and the evaluation server read them: one line
    ``<image index> <DET class id> <score> <xmin> <ymin> <xmax> <ymax>`` per detection, the image index
    of the devkit's val.txt or test.txt, the class id of map_det.txt, the corners in the annotations'
    pixels. Needs every image's ``det_index`` (images of val and test lists) and every category's
    ``det_id`` (classes read from map_det.txt); returns why the file was not written, None when it was."""
    problem = results_file_problem(gt_dataset)
    if problem:
        return problem
    index_of = {image["id"]: image["det_index"] for image in gt_dataset["images"]}
    det_id_of = {category["id"]: category["det_id"] for category in gt_dataset["categories"]}
    lines = []
    for record in sorted(results, key=lambda r: (index_of[r["image_id"]], -r["score"])):
        x1, y1, x2, y2 = corners(record["bbox"])
        lines.append(f"{index_of[record['image_id']]} {det_id_of[record['category_id']]} {record['score']:.6f} "
                     f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(lines))
    return None


def score_det_test_set(gt_dataset: dict, image_ids: list[int], results: list[dict],
                       unreadable: list[tuple[int, str]], out_dir: str, source: str = "detections") -> dict:
    """The DET metric over the test images that went through the model, and the devkit's results file,
    ``out_dir``/det_results.txt, when the images have the devkit's indices. Unreadable images are left
    out of the score, named in one warning and counted: "num_images" is the number evaluated,
    "skipped_images" the rest. A set without annotations (DET test) is not scored: the file is for the
    evaluation server."""
    results_file = os.path.join(out_dir, RESULTS_FILE)
    not_written = write_det_results(gt_dataset, results, results_file)
    evaluated = images_to_score(image_ids, unreadable)
    counts = {"num_images": len(evaluated), "skipped_images": len(unreadable)}
    if not_written is None:
        counts["results_file"] = results_file
    if "annotations" not in gt_dataset:
        logger.warning("the test set has no annotations, so nothing is scored here: %d detections of %d images%s",
                       len(results), len(evaluated), f" written to {results_file}, for the evaluation server"
                       if not_written is None else f" (no results file for the server: {not_written})")
        return counts
    if not_written not in (None, NO_IMAGE_INDEX):
        logger.warning("no %s: %s", RESULTS_FILE, not_written)
    return {**evaluate_det(gt_dataset, results, evaluated, source), **counts}
