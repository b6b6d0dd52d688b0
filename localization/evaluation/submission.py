"""What the RPN's and the R-CNN stage's evaluations share (paper App. C): the ranked guesses of each val image,
the submission they make, its official errors and the paper's table row.

The 5 guesses of an image are its top-5 classes, each with the localizer's box for that class. "LOC error on
GT class" (GT-known) scores the box of the image's GT class alone. The top-1/top-5 LOC and CLS errors are the
official devkit rules (evaluation/ilsvrc_metric.py) applied to the submission exactly as it is written to
disk (boxes rounded to whole pixels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from classification.data.ilsvrc import Annotations, Synsets, read_blacklist, read_kaggle_solution
from resnet_engine import distributed as dist_utils
from resnet_engine.errors import UserError

from ..data.loc_dataset import check_boxes_fit_images
from ..data.predictions import write_kaggle_csv
from .ilsvrc_metric import gt_known_loc_error, localization_errors

TOP_K = 5
METRIC_KEYS = ("top1_loc_err", "top5_loc_err", "top1_cls_err", "top5_cls_err", "gt_known_loc_err")


@dataclass
class ImageGuesses:
    """What one val image needs: its ranked top-5 classes and the RPN's box for each of them and for each GT
    class (keeping all K boxes of 50,000 images would take gigabytes)."""

    ranking: list[int]
    boxes: dict[int, tuple[int, int, int, int]]  # class index -> inclusive box in whole pixels


def top_classes(scores: np.ndarray, k: int = TOP_K) -> list[int]:
    """Class indices of the k highest scores, best first (ties: the lower index first)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return [int(c) for c in order[:k]]


def whole_pixels(box) -> tuple[int, int, int, int]:
    return tuple(int(round(float(v))) for v in box)


def build_submission(guesses: dict[str, ImageGuesses], synsets: Synsets) -> Annotations:
    """{image id: [(wnid, box)] x 5}: each ranked class with the RPN's box for that class."""
    return {image_id: [(synsets.wnids[c], guesses[image_id].boxes[c]) for c in guesses[image_id].ranking]
            for image_id in sorted(guesses)}


@dataclass
class ValTruth:
    """The GT objects of the scored val images, each image's GT class indices (distinct, in order), and
    the images that test.blacklist leaves out of the LOC errors."""

    objects: Annotations
    classes: dict[str, list[int]]
    blacklist: set[str]


def val_ground_truth(cfg, synsets: Synsets, image_ids) -> ValTruth:
    everything = read_kaggle_solution(os.path.join(cfg.data.root, "LOC_val_solution.csv"), synsets)
    gt = {image_id: everything[image_id] for image_id in image_ids}
    gt_classes = {image_id: [synsets.label(wnid) - 1 for wnid in dict.fromkeys(w for w, _ in objects)]
                  for image_id, objects in gt.items()}
    if cfg.test.blacklist and not os.path.isfile(cfg.test.blacklist):
        raise UserError(f"blacklist not found: {cfg.test.blacklist} (set test.blacklist to the devkit's "
                        "ILSVRC2015_clsloc_validation_blacklist.txt, or to '' to score every val image)")
    blacklist = read_blacklist(cfg.test.blacklist, list(gt)) if cfg.test.blacklist else set()
    return ValTruth(gt, gt_classes, blacklist)


def val_records_ground_truth(cfg, synsets: Synsets, records) -> ValTruth:
    """val_ground_truth of a test set's records, once a few of their images are seen to hold their boxes:
    val images resized on disk, scored against the original CSV, would compare boxes of two frames."""
    truth = val_ground_truth(cfg, synsets, [record.image_id for record in records])
    check_boxes_fit_images([(record.path, [box for _, box in truth.objects[record.image_id]]) for record in records],
                           os.path.join(cfg.data.root, "LOC_val_solution.csv"))
    return truth


def submission_files(out_dir: str | None, prefix: str) -> dict[str, str]:
    """Where the submission (5 guesses) and the GT class's boxes (one guess: scored by tools/eval_loc.py's
    scoring mode, its top-1 LOC error is the LOC error on GT class) are written; none without ``out_dir``."""
    if not out_dir:
        return {}
    return {"submission": os.path.join(out_dir, f"{prefix}_submission.csv"),
            "gt_class_boxes": os.path.join(out_dir, f"{prefix}_gt_class.csv")}


def guesses_metrics(guesses: dict[str, ImageGuesses], truth: ValTruth, synsets: Synsets,
                    files: dict[str, str]) -> dict:
    """Errors in percent (METRIC_KEYS) of one set of guesses, and the number of images blacklisted for the
    LOC errors; the submission and the GT-class boxes are written to ``files`` when given (main process)."""
    predictions = build_submission(guesses, synsets)
    gt = truth.objects
    errors = localization_errors(gt, predictions, blacklist=truth.blacklist)
    gt_boxes = {image_id: {synsets.wnids[c]: guesses[image_id].boxes[c] for c in truth.classes[image_id]}
                for image_id in sorted(guesses)}
    if files and dist_utils.is_main_process():
        write_kaggle_csv(predictions, files["submission"])
        write_kaggle_csv({image_id: list(by_class.items()) for image_id, by_class in gt_boxes.items()},
                         files["gt_class_boxes"])
    metrics = {key: round(value, 4) for key, value in errors.as_dict().items() if key in METRIC_KEYS}
    metrics["gt_known_loc_err"] = round(gt_known_loc_error(gt, gt_boxes, truth.blacklist), 4)
    metrics["num_blacklisted"] = errors.num_blacklisted
    return metrics


def network_name(backbone_cfg) -> str:
    width = "" if backbone_cfg.base_width == 64 else f" (width {backbone_cfg.base_width})"
    return f"ResNet-{backbone_cfg.depth}{width}"


def format_rows(metrics: dict) -> str:
    """The paper's Table 13 columns for one localizer, plus the other errors of the same run."""
    testing = "1-crop" if metrics["test_mode"] == "1crop" else "dense"
    header = ("method", "network", "testing", "LOC error on GT class", "classifier", "top-5 LOC error")
    row = (metrics["method"], metrics["network"], testing, f"{metrics['gt_known_loc_err']:.2f}",
           metrics["classifier"], f"{metrics['top5_loc_err']:.2f}")
    widths = [max(len(a), len(b)) for a, b in zip(header, row)]
    lines = ["  ".join(text.ljust(w) for text, w in zip(cells, widths)).rstrip() for cells in (header, row)]
    blacklisted = metrics.get("num_blacklisted", 0)
    loc_images = (f"LOC errors without the {blacklisted} blacklisted (test.blacklist)" if blacklisted else
                  "no blacklist: every image in the LOC errors")
    lines.append(f"top-1 LOC error {metrics['top1_loc_err']:.2f}%, top-1 / top-5 CLS error "
                 f"{metrics['top1_cls_err']:.2f}% / {metrics['top5_cls_err']:.2f}% ({metrics['num_images']} "
                 f"images, {loc_images}; errors in percent)")
    lines.append(f"classes ranked by {metrics['class_ranking']}")
    return "\n".join(lines)
