"""The per-class RPN on the val set (model mode of tools/eval_loc.py, and the evaluation during training): its
one box per class for every image, combined with a class ranking into the 5 guesses, and scored.

The combination (paper App. C): the 5 guesses of an image are its top-5 classes, each with the RPN's box for
that class (localization/rpn_localizer.py's one-box-per-class rule). The top-5 come from a classifier's
scores when one is given (evaluation/class_ranking.py); otherwise the RPN's own per-class maximum sigmoids
rank the classes. Scoring: evaluation/submission.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from classification.data.ilsvrc import Synsets
from classification.data.imagenet import list_val_images
from resnet_engine import distributed as dist_utils
from resnet_engine.loaders import build_test_loader

from ..data.loc_dataset import LocalizationDataset, LocEvalTransform
from ..rpn_localizer import RPNLocalizer
from .class_ranking import class_ranking
from .submission import (
    ImageGuesses,
    guesses_metrics,
    network_name,
    submission_files,
    top_classes,
    val_records_ground_truth,
    whole_pixels,
)


def build_loc_test_set(cfg, synsets: Synsets) -> LocalizationDataset:
    transform = LocEvalTransform(cfg.test.mode, cfg.test.resize, cfg.input.crop, list(cfg.test.dense_scales))
    records = list_val_images(cfg.data.root, synsets, cfg.test.max_images)
    return LocalizationDataset(records, transform, train=False, on_bad_image=cfg.data.on_bad_image)


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
    return dist_utils.all_gather_dict(results)


def score_localizer(model: RPNLocalizer, cfg, synsets: Synsets, classifier: str | Sequence[str] = "",
                    out_dir: str | None = None, progress: bool = True) -> dict:
    """Errors in percent (submission.METRIC_KEYS) plus how they were made. With ``out_dir``, writes the
    scored files there: loc_<mode>_submission.csv and loc_<mode>_gt_class.csv (submission_files)."""
    dataset = build_loc_test_set(cfg, synsets)
    truth = val_records_ground_truth(cfg, synsets, dataset.records)
    rankings, classifier_name, class_source = class_ranking(classifier, cfg, synsets, model.device, progress)
    guesses = localize_dataset(model, dataset, cfg, truth.classes, rankings, progress)
    files = submission_files(out_dir, f"loc_{cfg.test.mode}")
    metrics = guesses_metrics(guesses, truth, synsets, files)
    metrics.update(method="RPN", network=network_name(cfg.model.backbone), test_mode=cfg.test.mode,
                   classifier=classifier_name, class_ranking=class_source, num_images=len(truth.objects), **files)
    return metrics
