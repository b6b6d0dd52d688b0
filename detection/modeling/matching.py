"""Label assignment for anchors and RoIs, with crowd regions, and balanced sampling.

Both work on a whole batch at once: each image's GT boxes padded to the batch's largest count, with a
validity mask, so that a training step runs the same few operators whatever the number of images,
and without a device-to-host synchronization (no boolean-mask indexing, no shapes that depend on
the data). The one-image forms (:meth:`Matcher.__call__`, :func:`sample_balanced`) run the batched
code on a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -1
BACKGROUND = 0
FOREGROUND = 1
# The most IoU values the matcher holds at once (256 MB of float32); a batch above it is matched a few
# images at a time.
MAX_IOU_ELEMENTS = 2**26
# The IoU given to padded GT slots and to left-out candidates: below every real IoU (>= 0), so that
# they neither win a maximum nor claim a candidate.
NO_OVERLAP = -1.0


@dataclass
class PaddedBoxes:
    """The boxes of a batch's images as one (N, P, 4) tensor, zero-padded, with the (N, P) mask of the
    real ones. The RPN gives its training proposals in this form, P fixed by the config (the post-NMS
    count), so that no shape after it depends on the data. Not a tuple: code that iterates over a
    list of per-image boxes fails on it instead of reading the two tensors as two images."""

    boxes: torch.Tensor
    valid: torch.Tensor

    def per_image(self) -> list[torch.Tensor]:
        """Each image's real boxes (a boolean-mask index per image: a host sync each, not for a step)."""
        return [boxes[valid] for boxes, valid in zip(self.boxes, self.valid)]


def as_padded(boxes: PaddedBoxes | Sequence[torch.Tensor]) -> PaddedBoxes:
    """``boxes`` as :class:`PaddedBoxes`: per-image (G_i, 4) tensors padded to the largest G_i."""
    if isinstance(boxes, PaddedBoxes):
        return boxes
    return PaddedBoxes(*pad_boxes(boxes, boxes[0].device))


def pad_boxes(boxes: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (G_i, 4) float boxes on ``device`` -> (N, W, 4) zero-padded, and the (N, W) mask of the real
    ones; W = max G_i, at least 1, so that a gather from it is valid even when no image has a box."""
    padded = pad_rows(boxes)
    if padded.shape[1] == 0:
        padded = padded.new_zeros(len(boxes), 1, 4)
    return padded, row_mask([b.shape[0] for b in boxes], padded.shape[1], device)


def pad_values(values: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Per-image (G_i,) integers on one device -> (N, ``width``), zero-padded."""
    padded = pad_rows(values)
    return F.pad(padded, (0, width - padded.shape[1]))


def pad_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors of (G_i, ...) -> (N, max G_i, ...), zero-padded: one operator whatever N."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)


def row_mask(lengths: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
    """(N, width) mask, True in the first lengths[i] slots of row i (lengths are known on the host)."""
    return torch.arange(width, device=device) < torch.tensor(lengths).to(device)[:, None]


def batched_box_iou(boxes: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N, G, 4) and (N, A, 4) or (A, 4) xyxy boxes -> (N, G, A) IoU, with the arithmetic of
    torchvision.ops.box_iou (the same floats), which takes one image at a time."""
    candidates = candidates.expand(boxes.shape[0], -1, -1)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    candidate_area = (candidates[..., 2] - candidates[..., 0]) * (candidates[..., 3] - candidates[..., 1])
    top_left = torch.max(boxes[:, :, None, :2], candidates[:, None, :, :2])
    bottom_right = torch.min(boxes[:, :, None, 2:], candidates[:, None, :, 2:])
    extent = (bottom_right - top_left).clamp(min=0)
    inter = extent[..., 0] * extent[..., 1]
    union = area[:, :, None] + candidate_area[:, None, :] - inter
    return inter / union


def intersection_over_first_area(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(..., N, M) fraction of each box's area that lies inside each region; ``boxes`` (..., N, 4) and
    ``regions`` (..., M, 4), with leading batch dimensions that broadcast."""
    top_left = torch.max(boxes[..., :, None, :2], regions[..., None, :, :2])
    bottom_right = torch.min(boxes[..., :, None, 2:], regions[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).clamp(min=1e-6)
    return inter / area[..., None]


class Matcher:
    """Assigns each candidate box (anchor or RoI) to a ground-truth box, or to background / ignore.

    * IoU >= ``fg_iou_thresh``: foreground, matched to its best GT box;
    * IoU < ``bg_iou_thresh`` (and >= ``bg_iou_low``): background; in between, or below ``bg_iou_low``:
      ignored (``bg_iou_low`` = 0, no lower bound, is the RPN's rule);
    * ``allow_low_quality``: each GT box also claims its highest-IoU candidates (the RPN rule of
      Faster R-CNN, so that every object has at least one positive anchor);
    * crowd regions are never matched; a would-be background candidate lying mostly (over
      ``crowd_ioa``) inside a crowd region is ignored, since it may well cover an object.
    """

    def __init__(self, fg_iou_thresh: float, bg_iou_thresh: float, allow_low_quality: bool, bg_iou_low: float = 0.0,
                 crowd_ioa: float = 0.5):
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.bg_iou_low = bg_iou_low
        self.allow_low_quality = allow_low_quality
        self.crowd_ioa = crowd_ioa

    def __call__(self, candidates: torch.Tensor, gt_boxes: torch.Tensor, crowd_boxes: torch.Tensor | None = None):
        """One image: (matched GT index per candidate, label per candidate: 1 fg, 0 bg, -1 ignore)."""
        gt_valid = torch.ones(1, gt_boxes.shape[0], dtype=torch.bool, device=candidates.device)
        crowd = None if crowd_boxes is None else (crowd_boxes[None], torch.ones_like(crowd_boxes[None, :, 0], dtype=torch.bool))
        matched, labels = self.match_batch(candidates[None], gt_boxes[None], gt_valid, crowd)
        return matched[0], labels[0]

    def match_batch(self, candidates: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor,
                    crowd: tuple[torch.Tensor, torch.Tensor] | None = None,
                    candidate_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: ``candidates`` (N, A, 4), or (A, 4) shared by all images; ``gt_boxes`` (N, G, 4) padded,
        ``gt_valid`` (N, G); ``crowd``: padded (N, C, 4) crowd boxes and their mask; ``candidate_valid``
        (N, A): candidates left out of the matching (labelled IGNORE, matched 0, and never claimed by
        a GT box). Returns (matched (N, A), labels (N, A)).

        Images go through in groups whose (images, G, A) IoU tensor stays under ``MAX_IOU_ELEMENTS``
        (at COCO's sizes, a batch of 16 with 90 boxes would otherwise hold several GB at once)."""
        per_group = max(1, MAX_IOU_ELEMENTS // max(1, gt_boxes.shape[1] * candidates.shape[-2]))
        if gt_boxes.shape[0] <= per_group:
            return self.match_group(candidates, gt_boxes, gt_valid, crowd, candidate_valid)
        results = []
        for start in range(0, gt_boxes.shape[0], per_group):
            rows = slice(start, start + per_group)
            results.append(self.match_group(
                candidates if candidates.dim() == 2 else candidates[rows], gt_boxes[rows], gt_valid[rows],
                None if crowd is None else (crowd[0][rows], crowd[1][rows]),
                None if candidate_valid is None else candidate_valid[rows]))
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def match_group(self, candidates: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor,
                    crowd: tuple[torch.Tensor, torch.Tensor] | None,
                    candidate_valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`match_batch` of images matched together."""
        num_images = gt_boxes.shape[0]
        num_candidates = candidates.shape[-2]
        iou = batched_box_iou(gt_boxes, candidates)
        usable = gt_valid[:, :, None] if candidate_valid is None else gt_valid[:, :, None] & candidate_valid[:, None, :]
        iou = torch.where(usable, iou, iou.new_full((), NO_OVERLAP))
        if gt_boxes.shape[1]:
            best_iou, matched = iou.max(dim=1)
        else:
            best_iou = iou.new_full((num_images, num_candidates), NO_OVERLAP)
            matched = torch.zeros(num_images, num_candidates, dtype=torch.int64, device=iou.device)
        labels = torch.full_like(matched, IGNORE)
        labels = torch.where((best_iou < self.bg_iou_thresh) & (best_iou >= self.bg_iou_low), BACKGROUND, labels)
        labels = torch.where(best_iou >= self.fg_iou_thresh, FOREGROUND, labels)
        if self.allow_low_quality and gt_boxes.shape[1]:
            best_per_gt = iou.max(dim=2, keepdim=True).values
            # Ties included; a GT box that overlaps nothing claims nothing.
            claimed = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=1)
            labels = torch.where(claimed, FOREGROUND, labels)
        # An image without GT boxes: every candidate is background.
        labels = torch.where(gt_valid.any(dim=1, keepdim=True), labels, BACKGROUND)
        matched = torch.where(gt_valid.any(dim=1, keepdim=True), matched, 0)
        if crowd is not None and crowd[0].shape[1]:
            crowd_boxes, crowd_valid = crowd
            ioa = intersection_over_first_area(candidates, crowd_boxes)
            in_crowd = (torch.where(crowd_valid[:, None, :], ioa, 0.0) > self.crowd_ioa).any(dim=2)
            labels = torch.where(in_crowd & (labels == BACKGROUND), IGNORE, labels)
        if candidate_valid is not None:
            labels = torch.where(candidate_valid, labels, IGNORE)
            matched = torch.where(candidate_valid, matched, 0)
        return matched, labels


def random_priorities(num_images: int, count: int, generators: Sequence[torch.Generator | None],
                      device: torch.device) -> torch.Tensor:
    """(N, count) uniform [0, 1) draws, each image's row from its own generator's stream.

    The per-image CPU generator keeps sampling reproducible and independent of the number of
    processes. On a GPU, drawing ~100k numbers on the CPU and copying them costs host time in every
    step; there the CPU generator only seeds a device generator, which draws them on the GPU.
    """
    rows = []
    for image in range(num_images):
        generator = generators[image] if generators else None
        if generator is None:
            rows.append(torch.rand(count, device=device))
        elif device.type == "cpu":
            rows.append(torch.rand(count, generator=generator))
        else:
            on_device = torch.Generator(device=device)
            # A CPU draw read with tolist: no device sync, and no aten item, which the step's count of
            # sync-forcing operators (benchmarks/bench_step_ops.py) could not tell from one.
            on_device.manual_seed(torch.randint(0, 2**62, (1,), generator=generator).tolist()[0])
            rows.append(torch.rand(count, generator=on_device, device=device))
    return torch.stack(rows)


def sample_balanced_batch(labels: torch.Tensor, batch_size_per_image: int, positive_fraction: float,
                          priorities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each image (row of (N, A) ``labels``), at most ``batch_size_per_image * positive_fraction``
    of its positives and negatives for the rest, each a uniformly random subset: those with the
    highest of the (N, A) ``priorities`` (independent uniform draws).

    Returns (N, S) ``index`` into A, the mask ``valid`` of the slots holding a sample, and ``positive``
    (valid and foreground), S = min(batch_size_per_image, A). Each row's samples come first,
    positives before negatives, each by decreasing priority; an image with fewer candidates than
    S leaves its last slots invalid, their indices those of its samples again, in turn (an image
    without any sample: some candidate's), safe to gather and masked out of the losses.
    """
    num_candidates = labels.shape[1]
    size = min(batch_size_per_image, num_candidates)
    max_positive = min(int(batch_size_per_image * positive_fraction), num_candidates)
    unavailable = priorities.new_full((), -1.0)  # below every priority
    pos_priority, pos_index = torch.where(labels == FOREGROUND, priorities, unavailable).topk(max_positive, dim=1)
    pos_valid = pos_priority >= 0
    neg_priority, neg_index = torch.where(labels == BACKGROUND, priorities, unavailable).topk(size, dim=1)
    rank = torch.arange(size, device=labels.device)
    wanted_negatives = batch_size_per_image - pos_valid.sum(dim=1, keepdim=True)
    neg_valid = (neg_priority >= 0) & (rank < wanted_negatives)
    # The valid slots first (a stable sort keeps positives, then negatives, each in priority order).
    index = torch.cat([pos_index, neg_index], dim=1)
    valid = torch.cat([pos_valid, neg_valid], dim=1)
    positive = torch.cat([pos_valid, torch.zeros_like(neg_valid)], dim=1)
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :size]
    index, valid, positive = index.gather(1, order), valid.gather(1, order), positive.gather(1, order)
    # The empty slots repeat the row's samples in turn: what a head computes there (a BatchNorm's batch
    # statistics too) then comes from real samples, not from padding or left-out candidates.
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    return index.gather(1, torch.arange(size, device=labels.device) % count), valid, positive


def sample_balanced(labels: torch.Tensor, batch_size_per_image: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's :func:`sample_balanced_batch`, drawn from ``generator``'s stream: the indices of the
    sampled positives and negatives."""
    if labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=labels.device)
        return empty, empty
    priorities = random_priorities(1, labels.numel(), [generator], labels.device)
    index, valid, positive = sample_balanced_batch(labels[None], batch_size_per_image, positive_fraction, priorities)
    return index[positive], index[valid & ~positive]
