"""The paper's test-time improvements (Appendix B): box refinement, box voting, multi-scale testing.

A :class:`TestTimeDetector` wraps a trained :class:`FasterRCNN` and replaces its single-scale
inference; the weights are the same. Everything is done in original-image pixels, so that
predictions from several scales (and the re-pooled refined boxes) live in one frame.

Choices where the paper is not explicit (documented in the README as well):

* Box refinement re-pools, for each RoI, the regressed box of its top-scoring foreground class; the
  new prediction has a full score vector and per-class boxes, like the original one.
* Box voting follows the official code of Gidaris & Komodakis: the voters of a surviving box are
  all same-class candidates before NMS with IoU >= ``box_voting_iou`` (itself included), weighted
  by max(0, score); the survivor keeps its own score.
* Multi-scale "paper" mode: proposals from one scale (``rpn_scale``); for each RoI the scale at
  which its area is closest to 224x224, plus the neighbouring scale on the other side of 224x224
  (the two end scales when there is none); the two head features (after res5/fc, with global
  context when enabled) are merged by element-wise max before the classifier and box regressor.
  Each scale's longer side is capped at ``max_size * scale / base_scale``: the test aspect cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_area, box_iou

from ..boxes import flip_boxes
from ..data.transforms import resize_shortest_edge
from .roi_heads import select_detections


@dataclass
class TestTimeOptions:
    """The ``test`` and ``input`` keys that inference reads (their defaults are in detection/config.py);
    ``base_scale`` and ``max_size`` are input.min_size_test and input.max_size_test."""

    __test__ = False  # not a pytest class, despite the name

    base_scale: int
    max_size: int
    scales: Sequence[int]
    multiscale_mode: str
    rpn_scale: int
    canonical_size: float
    flip: bool
    box_refinement: bool
    refine_nms_thresh: float
    box_voting: bool
    box_voting_iou: float
    score_thresh: float
    nms_thresh: float
    detections_per_img: int

    @classmethod
    def from_config(cls, test_cfg, input_cfg) -> TestTimeOptions:
        return cls(base_scale=input_cfg.min_size_test, max_size=input_cfg.max_size_test,
                   scales=tuple(test_cfg.scales or ()), multiscale_mode=test_cfg.multiscale_mode,
                   rpn_scale=test_cfg.rpn_scale, canonical_size=test_cfg.canonical_size, flip=test_cfg.flip, box_refinement=test_cfg.box_refinement,
                   refine_nms_thresh=test_cfg.refine_nms_thresh, box_voting=test_cfg.box_voting,
                   box_voting_iou=test_cfg.box_voting_iou, score_thresh=test_cfg.score_thresh,
                   nms_thresh=test_cfg.nms_thresh, detections_per_img=test_cfg.detections_per_img)

    @property
    def pyramid(self) -> list[int]:
        return sorted(set(self.scales)) or [self.base_scale]

    @property
    def any_enabled(self) -> bool:
        return bool(self.scales) or self.flip or self.box_refinement or self.box_voting


# -- pure pieces (unit-tested on hand-computed cases) -----------------------------------------------
def box_voting(kept_boxes: torch.Tensor, kept_labels: torch.Tensor, candidate_boxes: torch.Tensor,
               candidate_scores: torch.Tensor, candidate_labels: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Each kept box becomes the score-weighted mean of the same-class candidates overlapping it.

    Weights are max(0, score); a kept box is among its own candidates, so it always has a voter.
    """
    if kept_boxes.numel() == 0:
        return kept_boxes
    same_class = kept_labels[:, None] == candidate_labels[None, :]
    voters = (box_iou(kept_boxes, candidate_boxes) >= iou_thresh) & same_class
    weights = voters * candidate_scores.clamp(min=0)[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = weights @ candidate_boxes / total.clamp(min=1e-12)
    # No positive weight at all (scores of 0): keep the box as it was.
    return torch.where(total > 0, voted, kept_boxes)


def choose_scale_pairs(areas: torch.Tensor, factors: torch.Tensor, canonical: float) -> torch.Tensor:
    """(R,) RoI areas in original pixels and (S,) ascending scale factors -> (R, 2) scale indices.

    The first index is the scale where the scaled area is closest to canonical**2; the second is
    its neighbour on the other side of canonical**2, or the other end scale at the pyramid's ends.
    """
    num_scales = factors.numel()
    scaled = areas[:, None] * factors[None, :] ** 2
    target = float(canonical) ** 2
    best = (scaled - target).abs().argmin(dim=1)
    too_big = scaled.gather(1, best[:, None]).squeeze(1) > target  # shrink: the next smaller scale
    other = torch.where(too_big, best - 1, best + 1)
    low_end = other < 0
    high_end = other >= num_scales
    other = torch.where(low_end, torch.ones_like(other).clamp(max=num_scales - 1), other)
    other = torch.where(high_end, torch.full_like(other, max(num_scales - 2, 0)), other)
    return torch.stack([best, other], dim=1)


# -- the detector --------------------------------------------------------------------------------
@dataclass
class ScaleLevel:
    """One pyramid level: its features and the factors from original to network pixels."""

    features: dict
    factor_x: float
    factor_y: float
    size: tuple[int, int]
    padded_size: tuple[int, int]

    def to_network(self, boxes: torch.Tensor) -> torch.Tensor:
        return boxes * boxes.new_tensor([self.factor_x, self.factor_y] * 2)

    @property
    def factor(self) -> float:
        return (self.factor_x * self.factor_y) ** 0.5


class TestTimeDetector(nn.Module):
    """Inference with box refinement, box voting and multi-scale testing around a trained detector.

    Input samples carry the original image (not resized): the detector resizes it to each scale.
    """

    __test__ = False

    def __init__(self, model: nn.Module, options: TestTimeOptions):
        super().__init__()
        self.model = model
        self.options = options

    @property
    def roi_heads(self):
        return self.model.roi_heads

    @torch.inference_mode()
    def forward(self, batch: list[dict]) -> list[dict]:
        return [self.detect(sample["image"], int(sample.get("height", sample["image"].shape[-2])),
                            int(sample.get("width", sample["image"].shape[-1]))) for sample in batch]

    def detect(self, image: torch.Tensor, height: int, width: int) -> dict:
        """The detections of ``image`` (its own pixels) with the boxes in a ``height`` x ``width`` frame:
        the same as the image's, or that of the annotations when the file was resized on disk."""
        image_height, image_width = image.shape[-2:]
        detections = self.detect_in_own_pixels(image, image_height, image_width)
        if (image_height, image_width) != (height, width):
            scale = detections["boxes"].new_tensor([width / image_width, height / image_height] * 2)
            detections["boxes"] = detections["boxes"] * scale
        return detections

    def detect_in_own_pixels(self, image: torch.Tensor, height: int, width: int) -> dict:
        options = self.options
        passes = [False, True] if options.flip else [False]
        scores, boxes = [], []
        # Union mode with test.scales detects at each of them, RPN included, even when there is one (the
        # paper's pass would take its proposals at input.min_size_test); without scales: one pass.
        if options.multiscale_mode == "paper" or not options.scales:
            for flipped in passes:
                s, b = self.paper_pass(image, height, width, flipped)
                scores.append(s)
                boxes.append(b)
        else:  # "union": a full single-scale detection at every scale, pooled before the final NMS
            for scale in options.pyramid:
                for flipped in passes:
                    s, b = self.single_scale_pass(image, height, width, scale, flipped)
                    scores.append(s)
                    boxes.append(b)
        return self.final_detections(torch.cat(scores), torch.cat(boxes))

    # -- passes -------------------------------------------------------------------------------------
    def paper_pass(self, image, height, width, flipped: bool):
        options = self.options
        source = image.flip(-1) if flipped else image
        rpn_scale = options.rpn_scale or options.base_scale
        levels = {scale: self.level(source, scale) for scale in sorted(set(options.pyramid) | {rpn_scale})}
        proposals = self.proposals(levels[rpn_scale])
        pyramid = [levels[s] for s in options.pyramid]
        scores, boxes = self.score_boxes(pyramid, proposals, (height, width))
        if flipped:
            boxes = flip_boxes(boxes, width)
        return scores, boxes

    def single_scale_pass(self, image, height, width, scale: int, flipped: bool):
        source = image.flip(-1) if flipped else image
        level = self.level(source, scale)
        scores, boxes = self.score_boxes([level], self.proposals(level), (height, width))
        if flipped:
            boxes = flip_boxes(boxes, width)
        return scores, boxes

    def score_boxes(self, pyramid: list[ScaleLevel], proposals: torch.Tensor, image_size: tuple[int, int]):
        """(R', K+1) scores and (R', K+1, 4) boxes in original pixels, refined predictions included."""
        scores, boxes = self.head(pyramid, proposals, image_size)
        if not self.options.box_refinement:
            return scores, boxes
        top_class = scores[:, 1:].argmax(dim=1) + 1
        refined_rois = boxes[torch.arange(len(boxes), device=boxes.device), top_class]
        new_scores, new_boxes = self.head(pyramid, refined_rois, image_size)
        return torch.cat([scores, new_scores]), torch.cat([boxes, new_boxes])

    # -- pieces ------------------------------------------------------------------------------------
    def level(self, image: torch.Tensor, scale: int) -> ScaleLevel:
        height, width = image.shape[-2:]
        # The test aspect cap, scaled with the shorter side.
        max_size = self.options.max_size * scale / self.options.base_scale
        resized = resize_shortest_edge(image, scale, max_size)
        new_h, new_w = resized.shape[-2:]
        batch, sizes = self.model.preprocess([resized])
        return ScaleLevel(self.model.backbone(batch), new_w / width, new_h / height, sizes[0],
                          tuple(batch.shape[-2:]))

    def proposals(self, level: ScaleLevel) -> torch.Tensor:
        """RPN proposals of one level, in original pixels."""
        proposals, _ = self.model.rpn(level.padded_size, level.features, [level.size])
        return proposals[0] / proposals[0].new_tensor([level.factor_x, level.factor_y] * 2)

    def head(self, pyramid: list[ScaleLevel], rois: torch.Tensor, image_size: tuple[int, int]):
        """Class scores and per-class boxes of ``rois`` (original pixels), max-merged over scale pairs."""
        heads = self.roi_heads
        if len(pyramid) == 1 or len(rois) == 0:  # no region at all: the empty (0, C) features of one level
            level = pyramid[0]
            features = heads.region_features(level.features, [level.to_network(rois)], [level.size])
        else:
            factors = rois.new_tensor([level.factor for level in pyramid])
            pairs = choose_scale_pairs(box_area(rois), factors, self.options.canonical_size)
            features = None
            for index, level in enumerate(pyramid):
                rows = torch.nonzero((pairs == index).any(dim=1)).flatten()
                if rows.numel() == 0:
                    continue
                part = heads.region_features(level.features, [level.to_network(rois[rows])], [level.size])
                if features is None:
                    features = part.new_full((len(rois), part.shape[1]), float("-inf"))
                features[rows] = torch.maximum(features[rows], part)
        logits, deltas = heads.predictor(features)
        scores, boxes = heads.decode(logits, deltas, [rois], [image_size])
        return scores[0], boxes[0]

    def final_detections(self, scores: torch.Tensor, boxes: torch.Tensor) -> dict:
        options = self.options
        nms = options.refine_nms_thresh if options.box_refinement else options.nms_thresh
        detections = select_detections(scores, boxes, options.score_thresh, nms, options.detections_per_img)
        if options.box_voting and len(detections["boxes"]):
            num_classes = scores.shape[1]
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores)[:, 1:].reshape(-1)
            detections["boxes"] = box_voting(detections["boxes"], detections["labels"], boxes[:, 1:].reshape(-1, 4),
                                             scores[:, 1:].reshape(-1), labels, options.box_voting_iou)
        return detections

