"""Model mode of tools/eval_loc.py: run the per-class RPN on the val set, combine it with a classifier, score.

The combination (paper App. C): the 5 guesses of an image are its top-5 classes, each with the RPN's box for
that class (localization/rpn_localizer.py's one-box-per-class rule). The top-5 come from a classifier's
scores when one is given (``classifier.weights``, a tools/train_cls.py checkpoint); otherwise the RPN's own
per-class maximum sigmoids rank the classes, and the output says so.

"LOC error on GT class" (GT-known) scores the RPN's box for the image's GT class alone. The top-1/top-5 LOC
and CLS errors are the official devkit rules (localization/metrics.py) applied to the submission exactly as
it is written to disk (boxes rounded to whole pixels).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.config import config_from_text
from resnet_engine.errors import UserError

from .data.classification import build_test_loader, list_val_images
from .data.ilsvrc import KAGGLE_HEADER, Annotations, Synsets, read_kaggle_solution
from .data.localization import LocalizationDataset, LocEvalTransform
from .metrics import gt_known_loc_error, localization_errors
from .rpn_localizer import RPNLocalizer

logger = logging.getLogger(__name__)

TOP_K = 5
METRIC_KEYS = ("top1_loc_err", "top5_loc_err", "top1_cls_err", "top5_cls_err", "gt_known_loc_err")


# --------------------------------------------------------------------------------------------- running the RPN


def build_loc_test_set(cfg, synsets: Synsets) -> LocalizationDataset:
    transform = LocEvalTransform(cfg.test.mode, cfg.test.resize, cfg.input.crop, list(cfg.test.dense_scales))
    records = list_val_images(cfg.data.root, synsets, cfg.test.max_images)
    return LocalizationDataset(records, transform, train=False, on_bad_image=cfg.data.on_bad_image)


@dataclass
class ImageGuesses:
    """What one val image needs: its ranked top-5 classes and the RPN's box for each of them and for each GT
    class (keeping all K boxes of 50,000 images would take gigabytes)."""

    ranking: list[int]
    boxes: dict[int, tuple[int, int, int, int]]  # class index -> inclusive box in whole pixels


@torch.inference_mode()
def localize_dataset(model: RPNLocalizer, dataset: LocalizationDataset, cfg, gt_classes: dict[str, list[int]],
                     class_rankings: dict[str, list[int]] | None = None,
                     progress: bool = True) -> dict[str, ImageGuesses]:
    """Run the RPN on every readable val image, gathered on all processes. The top-5 classes come from
    ``class_rankings`` (a classifier's) when given, else from the RPN's own per-class scores."""
    model.eval()
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    flip = cfg.test.mode == "dense" and cfg.test.dense_flip
    results = {}
    bar = tqdm(loader, desc=f"localize {cfg.test.mode}", leave=False,
               disable=not (progress and dist_utils.is_main_process()))
    for batch in bar:
        for sample in batch:
            image_id = sample["image_id"]
            if sample["views"] is None or (class_rankings is not None and image_id not in class_rankings):
                continue  # unreadable: no prediction, so the metric counts it wrong
            boxes, scores = model.localize(sample["views"], sample["geometries"], sample["size"], flip)
            ranking = top_classes(scores.numpy()) if class_rankings is None else class_rankings[image_id]
            needed = dict.fromkeys(ranking + list(gt_classes.get(image_id, ())))
            results[image_id] = ImageGuesses(ranking, {c: whole_pixels(boxes[c]) for c in needed})
    merged = {}
    for part in dist_utils.all_gather_objects(results):
        merged.update(part)
    return merged


# --------------------------------------------------------------------------------------------- the classifier


def load_trained_classifier(spec: str, synsets: Synsets):
    """A classifier checkpoint of tools/train_cls.py and its own config (input size, normalization, views)."""
    from .classifier import build_classifier
    from .config import ClassificationConfig
    from .train_cls import load_classifier_weights

    state = load_checkpoint(spec)
    meta = state.get("meta") or {}
    if not state.get("config") or meta.get("task") != "classification":
        raise UserError(f"{spec} is not a classifier checkpoint of tools/train_cls.py: give classifier.weights "
                        f"(--classifier-weights) as output/<cls run>/model_final.pth")
    if list(meta.get("wnids", [])) != list(synsets.wnids):
        raise UserError(f"{spec} was trained on other classes than {synsets.source} lists: give a classifier "
                        f"trained on this data.root")
    cls_cfg = config_from_text(ClassificationConfig, state["config"])
    model = build_classifier(cls_cfg, len(synsets), load_backbone_weights=False)
    load_classifier_weights(model, spec)
    return model, cls_cfg


@torch.inference_mode()
def classifier_rankings(spec: str, cfg, synsets: Synsets, device: torch.device,
                        progress: bool = True) -> tuple[dict[str, list[int]], str]:
    """{image id: the classifier's top-5 class indices} on the same val images, and its network's name."""
    from .train_cls import _batch_scores, build_test_set

    model, cls_cfg = load_trained_classifier(spec, synsets)
    model.to(device).eval()
    # The classifier's own input settings, on the localizer's val images, tested as classifier.mode says.
    cls_cfg.data.root, cls_cfg.data.synthetic = cfg.data.root, ""
    cls_cfg.test.mode, cls_cfg.test.max_images = cfg.classifier.mode, cfg.test.max_images
    dataset = build_test_set(cls_cfg, synsets)
    loader = build_test_loader(dataset, cls_cfg.test.ims_per_batch, cfg.data.num_workers)
    rankings = {}
    for batch in tqdm(loader, desc=f"classify {cls_cfg.test.mode}", leave=False,
                      disable=not (progress and dist_utils.is_main_process())):
        samples = [s for s in batch if s["views"] is not None]
        if samples:
            values = _batch_scores(model, samples, cls_cfg.test.mode, cls_cfg.test.dense_flip).float().cpu()
            rankings.update({s["image_id"]: top_classes(v.numpy()) for s, v in zip(samples, values)})
    merged = {}
    for part in dist_utils.all_gather_objects(rankings):
        merged.update(part)
    return merged, network_name(cls_cfg.model.backbone)


def network_name(backbone_cfg) -> str:
    width = "" if backbone_cfg.base_width == 64 else f" (width {backbone_cfg.base_width})"
    return f"ResNet-{backbone_cfg.depth}{width}"


# --------------------------------------------------------------------------------------------- the submission


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


def write_kaggle_csv(predictions: Annotations, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(KAGGLE_HEADER)
        for image_id, guesses in predictions.items():
            writer.writerow([image_id, " ".join(f"{wnid} {b[0]} {b[1]} {b[2]} {b[3]}" for wnid, b in guesses)])
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------- scoring


def val_ground_truth(cfg, synsets: Synsets, image_ids) -> Annotations:
    everything = read_kaggle_solution(os.path.join(cfg.data.root, "LOC_val_solution.csv"), synsets)
    return {image_id: everything[image_id] for image_id in image_ids}


def score_localizer(model: RPNLocalizer, cfg, synsets: Synsets, classifier: str = "",
                    out_dir: str | None = None, progress: bool = True) -> dict:
    """Errors in percent (METRIC_KEYS) plus how they were made. With ``out_dir``, writes the scored files:
    loc_<mode>_submission.csv (5 guesses) and loc_<mode>_gt_class.csv (one guess, the GT class's box: scored
    by tools/eval_loc.py's scoring mode, its top-1 LOC error is the LOC error on GT class)."""
    dataset = build_loc_test_set(cfg, synsets)
    gt = val_ground_truth(cfg, synsets, [r.image_id for r in dataset.records])
    gt_classes = {image_id: [synsets.label(wnid) - 1 for wnid in dict.fromkeys(w for w, _ in objects)]
                  for image_id, objects in gt.items()}
    rankings = None
    if classifier:
        rankings, classifier_name = classifier_rankings(classifier, cfg, synsets, model.device, progress)
        class_source = f"classifier {classifier}"
    else:
        classifier_name = "RPN scores"
        class_source = "the RPN's own per-class max scores (no classifier given)"
    guesses = localize_dataset(model, dataset, cfg, gt_classes, rankings, progress)
    predictions = build_submission(guesses, synsets)
    errors = localization_errors(gt, predictions)
    gt_boxes = {image_id: {synsets.wnids[c]: guesses[image_id].boxes[c] for c in gt_classes[image_id]}
                for image_id in sorted(guesses)}
    files = {}
    if out_dir:
        files = {"submission": os.path.join(out_dir, f"loc_{cfg.test.mode}_submission.csv"),
                 "gt_class_boxes": os.path.join(out_dir, f"loc_{cfg.test.mode}_gt_class.csv")}
        if dist_utils.is_main_process():
            write_kaggle_csv(predictions, files["submission"])
            write_kaggle_csv({image_id: list(by_class.items()) for image_id, by_class in gt_boxes.items()},
                             files["gt_class_boxes"])
    metrics = {key: round(value, 4) for key, value in errors.as_dict().items() if key in METRIC_KEYS}
    metrics["gt_known_loc_err"] = round(gt_known_loc_error(gt, gt_boxes), 4)
    metrics.update(method="RPN", network=network_name(cfg.model.backbone), test_mode=cfg.test.mode,
                   classifier=classifier_name, class_ranking=class_source, num_images=len(gt), **files)
    return metrics


def format_rows(metrics: dict) -> str:
    """The paper's Table 13 columns for one localizer, plus the other errors of the same run."""
    testing = "1-crop" if metrics["test_mode"] == "1crop" else "dense"
    header = ("method", "network", "testing", "LOC error on GT class", "classifier", "top-5 LOC error")
    row = (metrics["method"], metrics["network"], testing, f"{metrics['gt_known_loc_err']:.2f}",
           metrics["classifier"], f"{metrics['top5_loc_err']:.2f}")
    widths = [max(len(a), len(b)) for a, b in zip(header, row)]
    lines = ["  ".join(text.ljust(w) for text, w in zip(cells, widths)).rstrip() for cells in (header, row)]
    lines.append(f"top-1 LOC error {metrics['top1_loc_err']:.2f}%, top-1 / top-5 CLS error "
                 f"{metrics['top1_cls_err']:.2f}% / {metrics['top5_cls_err']:.2f}% ({metrics['num_images']} "
                 f"images; errors in percent)")
    lines.append(f"classes ranked by {metrics['class_ranking']}")
    return "\n".join(lines)
