"""The R-CNN stage's training data: each image's proposals of its GT class, labelled against its GT boxes,
sampled, and cut out of the image (paper App. C, "RPN+RCNN").

Crop and warp. Each proposal (optionally grown by ``rcnn.context_pad`` warped pixels on each side) is cut from
the original image and resampled to warp_size x warp_size with torchvision's roi_align (aligned, adaptive
sampling): a box the size of the output gives the pixels themselves, a box k times larger averages k x k
pixels per output pixel, a smaller one is interpolated bilinearly. All RoIs of an image go in one call.

Training is RoI-centric (why: an ImageNet image holds one dominant object, so the RoIs of one image are
nearly the same crop). A mini-batch is solver.ims_per_batch images with rcnn.rois_per_image RoIs each (1 on
ILSVRC: 256 RoIs from 256 images). A proposal with IoU >= rcnn.fg_iou_thresh (0.5) with a GT box is
foreground (label: the GT class), one with IoU in [bg_iou_low, fg_iou_thresh) is background (label 0); each
sampled RoI is foreground with probability fg_fraction. The GT boxes join the pool as foreground
(rcnn.add_gt_boxes). A RoI is mirrored with probability input.random_flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torchvision.ops import box_iou, roi_align

from detection.boxes import flip_boxes
from detection.data.image_io import to_chw_tensor
from resnet_engine.errors import UserError
from resnet_engine.flat_records import FlatRecords

from ..config import LocalizerRCNNConfig
from .loc_dataset import BoxedRecord, LocalizationDataset, inclusive_to_continuous, warn_if_boxes_outside

FOREGROUND, BACKGROUND, IGNORED = 1, 0, -1


class BoxEncoder(Protocol):
    """What the box targets need of the model's box coder (detection's BoxCoder): deltas from reference
    boxes to boxes."""

    def encode(self, reference: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor: ...


def with_context(boxes: torch.Tensor, warp_size: int, context_pad: int) -> torch.Tensor:
    """Grow boxes about their centres so that, once warped, the box itself spans warp_size - 2 * pad pixels."""
    if context_pad <= 0:
        return boxes
    factor = warp_size / (warp_size - 2 * context_pad)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat([centres - half, centres + half], dim=1)


def warp_regions(images: torch.Tensor, boxes: Sequence[torch.Tensor], warp_size: int,
                 context_pad: int = 0) -> torch.Tensor:
    """Crop every box from its image and resample it to warp_size x warp_size, in one roi_align call.

    ``images``: float (B, 3, H, W); ``boxes[b]``: (n_b, 4) continuous pixel boxes (x2 exclusive) of image b.
    Returns (sum n_b, 3, warp_size, warp_size), the RoIs in order. aligned=True puts pixel i's centre at
    i + 0.5, so an integer box as large as the output samples exactly the pixel centres; the adaptive
    sampling (ceil(box side / warp_size) points per output pixel and axis) averages when shrinking."""
    grown = [with_context(b.to(images.dtype), warp_size, context_pad) for b in boxes]
    return roi_align(images, grown, output_size=(warp_size, warp_size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


def label_proposals(proposals: torch.Tensor, gt_boxes: torch.Tensor, fg_iou_thresh: float,
                    bg_iou_low: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(label FOREGROUND / BACKGROUND / IGNORED, index of the best-overlapping GT box) per proposal."""
    overlaps = box_iou(proposals, gt_boxes)
    best, matched = overlaps.max(dim=1)
    labels = torch.full_like(matched, IGNORED)
    labels[best >= bg_iou_low] = BACKGROUND
    labels[best >= fg_iou_thresh] = FOREGROUND
    return labels, matched


def sample_rois(labels: torch.Tensor, count: int, fg_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``count`` RoIs (fewer only when there are not enough), foreground first. Each slot is
    foreground with probability ``fg_fraction`` so that even one RoI per image keeps the batch's fraction;
    a side that runs out is made up from the other."""
    foreground = torch.nonzero(labels == FOREGROUND).flatten()
    background = torch.nonzero(labels == BACKGROUND).flatten()
    wanted_fg = int((torch.rand(count, generator=generator) < fg_fraction).sum())
    num_fg = min(wanted_fg, foreground.numel())
    num_bg = min(count - num_fg, background.numel())
    num_fg = min(count - num_bg, foreground.numel())
    fg = foreground[torch.randperm(foreground.numel(), generator=generator)[:num_fg]]
    bg = background[torch.randperm(background.numel(), generator=generator)[:num_bg]]
    return torch.cat([fg, bg])


def roi_training_sample(pixels: torch.Tensor, proposals: torch.Tensor, gt_boxes: torch.Tensor, label: int,
                        rules: LocalizerRCNNConfig, coder: BoxEncoder, warp_size: int, context_pad: int, flip: bool,
                        generator: torch.Generator) -> dict:
    """One image's sampled RoIs: warped crops, class targets (0 = background, k + 1 = class k) and box
    targets (zeros for background). ``pixels`` is float (3, H, W); boxes are continuous, x2 exclusive;
    ``rules``: the ``rcnn`` section of the config (labelling and sampling)."""
    pool = torch.cat([proposals, gt_boxes]) if rules.add_gt_boxes else proposals
    if flip:
        width = pixels.shape[-1]
        pixels, pool, gt_boxes = pixels.flip(-1), flip_boxes(pool, width), flip_boxes(gt_boxes, width)
    labels, matched = label_proposals(pool, gt_boxes, rules.fg_iou_thresh, rules.bg_iou_low)
    chosen = sample_rois(labels, rules.rois_per_image, rules.fg_fraction, generator)
    rois = pool[chosen]
    foreground = labels[chosen] == FOREGROUND
    targets = torch.zeros(len(chosen), 4)
    if foreground.any():
        targets[foreground] = coder.encode(rois[foreground], gt_boxes[matched[chosen][foreground]])
    classes = torch.where(foreground, label + 1, 0)
    return {"crops": warp_regions(pixels[None], [rois], warp_size, context_pad), "classes": classes,
            "box_targets": targets}


def proposals_in_record_order(records: Sequence[BoxedRecord], proposals: dict[str, torch.Tensor]) -> FlatRecords:
    """Record i's proposals as ``{"found": whether the RPN gave any, "boxes": float32 (n, 4)}``, all in flat
    arrays: a dict of a tensor per image (544k on CLS-LOC) would be copied into every forked loader worker
    by its garbage collections, as a list of records would (resnet_engine/flat_records.py)."""
    found = [record.image_id in proposals for record in records]
    parts = [proposals[record.image_id].detach().cpu().float().numpy().reshape(-1, 4) if present
             else np.zeros((0, 4), np.float32) for record, present in zip(records, found)]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(part) for part in parts], out=offsets[1:])
    rows = np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)
    return FlatRecords.from_columns(len(records), {"found": found, "boxes": (rows, offsets)})


class RoITrainDataset(LocalizationDataset):
    """The boxed training images with their GT class's RPN proposals; ``dataset[(index, seed)]`` gives
    {"crops": float (m, 3, S, S) in 0-255, "classes": (m,), "box_targets": (m, 4), "image_id", "skipped"}.
    An image without proposals is skipped as an unreadable one is."""

    def __init__(self, records: list[BoxedRecord], proposals: dict[str, torch.Tensor], rules: LocalizerRCNNConfig,
                 coder: BoxEncoder, warp_size: int, context_pad: int, flip_prob: float, on_bad_image: str = "skip"):
        super().__init__(records, transform=None, train=True, on_bad_image=on_bad_image)
        self.proposals = proposals_in_record_order(records, proposals)
        self.images_with_proposals = int(self.proposals.column("found").sum())
        if records and not self.images_with_proposals:
            raise UserError(f"the RPN (rcnn.rpn_weights) gave no proposals for any of the {len(records)} training "
                            f"images, e.g. {records[0].path}: check that it was trained on this data (its "
                            "classes, data.root)")
        self.rules = rules
        self.coder = coder
        self.warp_size = warp_size
        self.context_pad = context_pad
        self.flip_prob = flip_prob

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, item)
        skipped = []
        for attempt in range(len(self.records)):
            position = (index + attempt) % len(self.records)
            record = self.records[position]
            image = self._read(record)
            proposals = self.proposals[position]
            if image is None or not proposals["found"]:
                skipped.append(record.path)
                continue
            warn_if_boxes_outside(record, image)
            generator = torch.Generator().manual_seed(int(seed))
            flip = bool(torch.rand((), generator=generator) < self.flip_prob)
            gt_boxes = inclusive_to_continuous(torch.tensor(record.boxes, dtype=torch.float32).view(-1, 4))
            sample = roi_training_sample(to_chw_tensor(image).float(), torch.from_numpy(proposals["boxes"]), gt_boxes,
                                         record.label, self.rules, self.coder, self.warp_size, self.context_pad,
                                         flip, generator)
            return {**sample, "image_id": record.image_id, "skipped": skipped}
        raise UserError(f"none of the {len(self.records)} training images can be read and has RPN proposals "
                        f"({self.images_with_proposals} have proposals), e.g. {self.records[0].path}")
