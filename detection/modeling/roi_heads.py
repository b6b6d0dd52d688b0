"""The Fast R-CNN step: sample RoIs, pool their features, classify and regress them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import remove_small_boxes

from .box_coder import BoxCoder
from .matching import (
    Matcher,
    PaddedBoxes,
    as_padded,
    pad_boxes,
    pad_values,
    random_priorities,
    sample_balanced_batch,
)
from .traceable import batched_nms, clip_boxes, size_tensor


def whole_image_boxes(image_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """One (1, 4) box (0, 0, width, height) per image; sizes may be ints or, while tracing or
    exporting, 0-dim tensors or symbolic ints."""
    return [torch.stack([size_tensor(v, torch.float32).to(device) for v in (0, 0, w, h)])[None]
            for h, w in image_sizes]


class RoIHeads(nn.Module):
    """Region classification and class-specific box regression on top of the proposals.

    Every setting is an explicit argument; the defaults of the ``model.roi_head`` and ``test`` keys are in
    detection/config.py.

    Args:
        pooler: (features, boxes per image, image sizes) -> pooled (R, C, S, S).
        box_head: pooled -> (R, D) region features (res5 for C4, fc layers for FPN).
        predictor: (R, D * (2 if global_context else 1)) -> class logits, box deltas.
        global_context: pool the whole image as one more RoI through the same pooler and head and
            concatenate its feature to every region's (paper, Appendix B).
    """

    def __init__(
        self,
        pooler: nn.Module,
        box_head: nn.Module,
        predictor: nn.Module,
        matcher: Matcher,
        *,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: Sequence[float],
        smooth_l1_beta: float,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        global_context: bool,
    ):
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.global_context = global_context

    # -- shared ----------------------------------------------------------------------------------
    def region_features(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                        image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Head features of every box (concatenated over images), with global context if enabled."""
        regions = self.box_head(self.pooler(features, boxes, image_sizes))
        if not self.global_context:
            return regions
        context = self.box_head(self.pooler(features, whole_image_boxes(image_sizes, regions.device), image_sizes))
        # Each image's context row expanded to its box count. Not repeat_interleave with a tensor of
        # counts: it reads their sum back from the device (a host sync in every step), and under
        # torch.export its output would have a count of its own, which it cannot equate with the regions'.
        per_box = torch.cat([row.expand(b.shape[0], -1) for row, b in zip(context.split(1), boxes)])
        return torch.cat([regions, per_box], dim=1)

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor] | PaddedBoxes,
                image_sizes: list[tuple[int, int]], targets: list[dict] | None = None):
        """Training (with ``targets``): (no detections, the losses). Inference: (each image's detections,
        no losses). ``proposals``: each image's boxes, or in training the RPN's :class:`PaddedBoxes`."""
        if self.training:
            proposals, labels, regression_targets, valid = self.sample_proposals(proposals, targets)
            logits, deltas = self.predictor(self.region_features(features, proposals, image_sizes))
            return [], self.losses(logits, deltas, labels, regression_targets, valid)
        scores, boxes = self.predict(features, proposals, image_sizes)
        return [self.select_detections(s, b) for s, b in zip(scores, boxes)], {}

    # -- training --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_proposals(self, proposals: list[torch.Tensor] | PaddedBoxes, targets: list[dict]):
        """Add the GT boxes to each image's proposals, label them, and sample a fixed foreground fraction,
        for the whole batch at once. ``proposals``: each image's boxes, or the RPN's padded ones; each
        image's candidates are its P proposal slots, then its G GT slots (P and G the batch's widths),
        and the slot decides which of the image's priority draws a candidate gets.

        Returns (per image, its S sampled boxes; labels (N*S,) in 0..K; regression targets (N*S, 4); the
        (N*S,) mask of the slots that hold a sample). Every image has the same S slots, so that no shape
        depends on the data; an image with fewer than ``batch_size_per_image`` labelled candidates fills
        its last slots with its own samples again (sample_balanced_batch), which ``valid`` leaves out of
        the losses.
        """
        proposals = as_padded(proposals)
        device = proposals.boxes.device
        gt_boxes, gt_valid = pad_boxes([t["boxes"].to(proposals.boxes.dtype) for t in targets], device)
        gt_labels = pad_values([t["labels"] for t in targets], gt_boxes.shape[1])
        candidates = torch.cat([proposals.boxes, gt_boxes], dim=1)
        candidate_valid = torch.cat([proposals.valid, gt_valid], dim=1)
        crowd = None
        if any("crowd_boxes" in t for t in targets):
            crowd = pad_boxes([t.get("crowd_boxes", gt_boxes.new_zeros(0, 4)) for t in targets], device)
        matched, match_labels = self.matcher.match_batch(candidates, gt_boxes, gt_valid, crowd, candidate_valid)
        priorities = random_priorities(len(targets), candidates.shape[1], [t.get("generator") for t in targets],
                                       device)
        index, valid, positive = sample_balanced_batch(match_labels, self.batch_size_per_image,
                                                       self.positive_fraction, priorities)
        boxes = candidates.gather(1, index[..., None].expand(-1, -1, 4))
        gt_index = matched.gather(1, index)
        labels = torch.where(positive, gt_labels.gather(1, gt_index), 0)
        matched_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        regression = self.box_coder.encode(boxes.reshape(-1, 4), matched_boxes.reshape(-1, 4))
        # Zero for the slots that are not positives (their encoding may not even be finite): a NaN
        # there would reach the gradients through the masked loss.
        regression = torch.where(positive.reshape(-1, 1), regression, 0.0)
        return list(boxes.unbind(0)), labels.reshape(-1), regression, valid.reshape(-1)

    def losses(self, logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
               regression_targets: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Cross-entropy over the sampled RoIs and box regression over the positives (the deltas of
        each one's class), both divided by the number of sampled RoIs; ``valid`` (R,) marks the rows
        that hold a sample (None: all)."""
        if valid is None:
            valid = torch.ones_like(labels, dtype=torch.bool)
        num_sampled = valid.sum().clamp(min=1)
        loss_cls = F.cross_entropy(logits.float(), labels, reduction="none")
        loss_cls = torch.where(valid, loss_cls, 0.0).sum() / num_sampled
        deltas = deltas.float().view(deltas.shape[0], -1, 4)
        class_deltas = deltas.gather(1, labels.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)
        loss_box = F.smooth_l1_loss(class_deltas, regression_targets, beta=self.smooth_l1_beta, reduction="none")
        loss_box = torch.where((valid & (labels > 0))[:, None], loss_box, 0.0).sum() / num_sampled
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    # -- inference -------------------------------------------------------------------------------
    def predict(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Class probabilities (R, K+1) and per-class boxes (R, K+1, 4), clipped, for each image."""
        logits, deltas = self.predictor(self.region_features(features, proposals, image_sizes))
        return self.decode(logits, deltas, proposals, image_sizes)

    def decode(self, logits: torch.Tensor, deltas: torch.Tensor, proposals: list[torch.Tensor],
               image_sizes: list[tuple[int, int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits (R, K+1) and deltas (R, (K+1)*4) of every image's proposals -> per image, class
        probabilities and per-class boxes clipped to its (height, width)."""
        counts = [p.shape[0] for p in proposals]  # 0-dim tensors while tracing: split follows them
        boxes = self.box_coder.decode(deltas.float(), torch.cat(proposals).float())
        boxes = boxes.view(-1, logits.shape[-1], 4)  # the class count, not the RoI count, fixed: R may be 0
        scores = F.softmax(logits.float(), dim=-1)
        boxes_per_image = [clip_boxes(b, size) for b, size in zip(boxes.split(counts), image_sizes)]
        return list(scores.split(counts)), boxes_per_image

    def select_detections(self, scores: torch.Tensor, boxes: torch.Tensor) -> dict:
        """Score threshold, per-class NMS and the top detections of one image."""
        return select_detections(scores, boxes, self.score_thresh, self.nms_thresh, self.detections_per_img)


def select_detections(scores: torch.Tensor, boxes: torch.Tensor, score_thresh: float, nms_thresh: float,
                      detections_per_img: int) -> dict[str, torch.Tensor]:
    """(R, K+1) scores and (R, K+1, 4) boxes -> at most ``detections_per_img`` detections (labels 1..K)."""
    num_classes = scores.shape[1]
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
    boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    keep = torch.nonzero(scores > score_thresh).flatten()
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

