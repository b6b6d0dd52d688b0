"""The R-CNN stage on the val set (model mode of tools/eval_loc.py with a ``task: rcnn`` config, and the
evaluation during its training): the proposals of the per-class RPN re-scored by the R-CNN, scored with the RPN's
own boxes alongside on the same images and class ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from classification.data.ilsvrc import Synsets
from classification.data.imagenet import list_val_images
from resnet_engine import distributed as dist_utils
from resnet_engine.loaders import build_test_loader

from ..data.loc_dataset import ImageAndViews, LocEvalTransform, continuous_to_inclusive
from ..rcnn import RCNNLocalizer
from ..rcnn_proposals import class_proposals, proposal_views
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


def build_rcnn_test_set(cfg, views: LocEvalTransform, synsets: Synsets) -> ImageAndViews:
    records = list_val_images(cfg.data.root, synsets, cfg.test.max_images)
    return ImageAndViews(records, views, train=False, on_bad_image=cfg.data.on_bad_image)


def to_numpy_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    return continuous_to_inclusive(boxes.float().cpu(), image_size).numpy()


@torch.inference_mode()
def localize_dataset_rcnn(rcnn: RCNNLocalizer, rpn: RPNLocalizer, dataset: ImageAndViews, cfg,
                          gt_classes: dict[str, list[int]], class_rankings: dict[str, list[int]] | None = None,
                          progress: bool = True) -> tuple[dict, dict]:
    """({image id: ImageGuesses} of the RPN alone, the same of RPN+RCNN), gathered on all processes. Both
    share the ranking: a classifier's when given, else the RPN's per-class max scores."""
    rcnn.eval()
    rpn.eval()
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    flip = cfg.test.mode == "dense" and cfg.test.dense_flip
    section = cfg.rcnn
    rpn_guesses, rcnn_guesses = {}, {}
    for batch in tqdm(loader, desc=f"RPN+RCNN {cfg.test.mode}", leave=False,
                      disable=not (progress and dist_utils.is_main_process())):
        for sample in batch:
            image_id, size = sample["image_id"], sample["size"]
            if sample["views"] is None or (class_rankings is not None and image_id not in class_rankings):
                continue  # unreadable: no prediction, so the metric counts it wrong
            proposals, logits = class_proposals(rpn, sample["views"], sample["geometries"], size,
                                                section.proposals_per_class, flip)
            ranking = (top_classes(logits[:, 0].float().cpu().numpy()) if class_rankings is None
                       else class_rankings[image_id])
            needed = list(dict.fromkeys(ranking + list(gt_classes.get(image_id, ()))))
            rpn_boxes = to_numpy_boxes(proposals[needed, 0], size)
            # Each R-CNN warps at its own rcnn.warp_size and context_pad (RCNNLocalizer.rules).
            boxes, _ = rcnn.rescore(sample["image"], proposals[needed], needed, section.test_chunk)
            rcnn_boxes = to_numpy_boxes(boxes, size)
            rpn_guesses[image_id] = ImageGuesses(ranking, {c: whole_pixels(b) for c, b in zip(needed, rpn_boxes)})
            rcnn_guesses[image_id] = ImageGuesses(ranking, {c: whole_pixels(b) for c, b in zip(needed, rcnn_boxes)})
    return dist_utils.all_gather_dict(rpn_guesses), dist_utils.all_gather_dict(rcnn_guesses)


def score_rcnn(rcnn: RCNNLocalizer, rpn: RPNLocalizer, rpn_cfg, cfg, synsets: Synsets,
               classifier: str | Sequence[str] = "", out_dir: str | None = None, progress: bool = True) -> dict:
    """RPN+RCNN errors in percent (submission.METRIC_KEYS, how they were made, the written files) and, under
    "rpn", the same errors of the RPN's own boxes on the same images and ranking."""
    dataset = build_rcnn_test_set(cfg, proposal_views(cfg, rpn_cfg), synsets)
    truth = val_records_ground_truth(cfg, synsets, dataset.records)
    rankings, classifier_name, class_source = class_ranking(classifier, cfg, synsets, rcnn.device, progress)
    rpn_guesses, rcnn_guesses = localize_dataset_rcnn(rcnn, rpn, dataset, cfg, truth.classes, rankings, progress)
    files = submission_files(out_dir, f"loc_rcnn_{cfg.test.mode}")
    shared = dict(test_mode=cfg.test.mode, classifier=classifier_name, class_ranking=class_source,
                  num_images=len(truth.objects))
    metrics = {**guesses_metrics(rcnn_guesses, truth, synsets, files), **files}
    metrics.update(method="RPN+RCNN", network=network_name(cfg.model.backbone), **shared)
    metrics["rpn"] = {**guesses_metrics(rpn_guesses, truth, synsets, {}), "method": "RPN",
                      "network": network_name(rpn_cfg.model.backbone), **shared}
    return metrics
