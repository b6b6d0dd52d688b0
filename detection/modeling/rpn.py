"""Region Proposal Network (Faster R-CNN, section 3.1).

In training, anchor labelling, sampling, target encoding and the losses run on the whole batch at
once (detection/modeling/matching.py) and force no device-to-host synchronization. Those left in a
training step's forward, counted by benchmarks/bench_step_ops.py, are the ones whose result is a
count that only the device knows:

* in :meth:`RegionProposalNetwork.select_batch_proposals`, once per image: the number of boxes that
  NMS keeps (the output size of torchvision's NMS, which the host must read: on a GPU its kernel ends
  in a ``masked_select``, one ``nonzero`` that the benchmark counts; on a CPU no aten operator reads
  it). One call over the whole batch would sync once but cost far more, as the method says. The proposals leave it padded to
  the configured post-NMS count with a mask (:class:`~detection.modeling.matching.PaddedBoxes`), so
  that the RoI head's shapes are the config's, not the data's;
* in the FPN RoI pooler, only where torchvision's RoIAlign runs (``model.roi_head.roi_align_impl``: "auto"
  picks it on GPUs) or the sampling ratio is adaptive (0): the RoIs of each pyramid level (one
  ``nonzero`` each) and those of none. The gather ("auto" on CPUs, "gather" anywhere) with a fixed
  sampling ratio pools every level in one call without them (resnet_ops/roi_align.py,
  one_table_roi_align).

The RoI head's sampling and both losses add none, and the backward none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import nms, remove_small_boxes

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .matching import Matcher, PaddedBoxes, pad_boxes, random_priorities, sample_balanced_batch
from .traceable import batched_nms, clip_boxes, exporting, top_count


class RPNHead(nn.Module):
    """A 3x3 conv with ReLU, then sibling 1x1 convs: one objectness logit and 4 deltas per anchor."""

    def __init__(self, in_channels: int, num_anchors: int, conv_channels: int):
        """``conv_channels``: width of the 3x3 conv; 0 keeps ``in_channels``."""
        super().__init__()
        width = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.cls_logits = nn.Conv2d(width, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(width, num_anchors * 4, 1)
        self.relu = nn.ReLU(inplace=True)  # a module: the inference fast path may fuse it into conv
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for feature in features:
            hidden = self.relu(self.conv(feature))
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def flatten_level(logits: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, A, H, W) and (N, 4A, H, W) -> (N, H*W*A) and (N, H*W*A, 4), in the anchors' order."""
    n, a, h, w = logits.shape
    logits = logits.permute(0, 2, 3, 1).reshape(n, -1)
    deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    return logits, deltas


def crossing_border(boxes: torch.Tensor, image_size: tuple, tolerance: float) -> torch.Tensor:
    """Whether each (..., 4) (x1, y1, x2, y2) box reaches more than ``tolerance`` pixels outside an
    image of (height, width) ``image_size`` (numbers, or tensors that broadcast with ``boxes[..., 0]``)."""
    height, width = image_size
    return ((boxes[..., 0] < -tolerance) | (boxes[..., 1] < -tolerance)
            | (boxes[..., 2] > width + tolerance) | (boxes[..., 3] > height + tolerance))


class RegionProposalNetwork(nn.Module):
    """Scores anchors, turns the best into proposals by NMS, and computes the RPN losses in training.

    Every setting is an explicit argument; the defaults of the ``model.rpn`` keys are in detection/config.py.

    Args:
        in_features: names of the feature maps to run on (one anchor level each).
        pre_nms_topk / post_nms_topk: (train, test) pairs; pre is per level, post per image.
        boundary_thresh: in training, ignore anchors that cross the image border by more than this
            many pixels (the paper ignores all of them: 0); negative keeps all anchors.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        matcher: Matcher,
        *,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float,
        min_size: float,
        smooth_l1_beta: float,
        loss_weight: float,
        boundary_thresh: float,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self.boundary_thresh = boundary_thresh

    def forward(self, padded_size: tuple[int, int], features: dict[str, torch.Tensor],
                image_sizes: list[tuple[int, int]], targets: list[dict] | None = None,
                training_counts: bool | None = None):
        """``padded_size``: (height, width) of the padded batch tensor, which sets the anchors' strides;
        ``image_sizes``: (height, width) of each image inside it, to which its proposals are clipped;
        ``training_counts``: keep the training (True) or test (False) pre/post-NMS counts; None: as the
        module's mode. Returns (proposals: a list of each image's boxes, or in a training step
        :class:`PaddedBoxes`; losses: empty unless training with ``targets``)."""
        maps = [features[name] for name in self.in_features]
        logits, deltas = self.head(maps)
        anchors = self.anchor_generator(padded_size, [m.shape[-2:] for m in maps], maps[0].device)
        flat = [flatten_level(lg, dt) for lg, dt in zip(logits, deltas)]
        level_logits = [f[0] for f in flat]
        level_deltas = [f[1] for f in flat]
        proposals = self.propose(level_logits, level_deltas, anchors, image_sizes, training_counts)
        losses = {}
        if self.training and targets is not None:
            losses = self.losses(torch.cat(level_logits, 1), torch.cat(level_deltas, 1), torch.cat(anchors),
                                 image_sizes, targets)
        return proposals, losses

    @torch.no_grad()
    def propose(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                image_sizes: list[tuple[int, int]],
                training_counts: bool | None = None) -> list[torch.Tensor] | PaddedBoxes:
        """Top-scoring anchors of each level, decoded, clipped, then NMS per level and image; the
        training or test counts as ``training_counts`` says (None: as the module's mode). A list of
        each image's boxes; in a training step (training counts in training mode, not traced) the
        same boxes as :class:`PaddedBoxes` (:meth:`select_batch_proposals`)."""
        phase = 0 if (self.training if training_counts is None else training_counts) else 1
        pre_topk = self.pre_nms_topk[phase]
        post_topk = self.post_nms_topk[phase]
        num_images = logits[0].shape[0]
        batch_index = torch.arange(num_images, device=logits[0].device)[:, None]
        scores, boxes, levels = [], [], []
        for level, (level_logits, level_deltas, level_anchors) in enumerate(zip(logits, deltas, anchors)):
            k = top_count(pre_topk, level_logits.shape[1])
            top_logits, top_index = level_logits.detach().topk(k, dim=1)
            top_deltas = level_deltas.detach()[batch_index, top_index]  # (N, k, 4)
            decoded = self.box_coder.decode(top_deltas.reshape(-1, 4), level_anchors[top_index.reshape(-1)])
            scores.append(top_logits)
            boxes.append(decoded.view(num_images, -1, 4))
            levels.append(torch.full_like(top_index[0], level))
        scores = torch.cat(scores, 1).sigmoid()
        boxes = torch.cat(boxes, 1)
        levels = torch.cat(levels)
        if phase == 0 and self.training and not (torch.jit.is_tracing() or exporting()):
            return self.select_batch_proposals(boxes, scores, levels, image_sizes, post_topk)
        proposals = []
        for image_boxes, image_scores, size in zip(boxes, scores, image_sizes):
            image_boxes = clip_boxes(image_boxes, size)
            # Degenerate boxes (clipped to nothing) are always dropped.
            keep = remove_small_boxes(image_boxes, max(self.min_size, 1e-3))
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], levels[keep]
            keep = batched_nms(image_boxes, image_scores, image_levels, self.nms_thresh)[:post_topk]
            proposals.append(image_boxes[keep])
        return proposals

    def select_batch_proposals(self, boxes: torch.Tensor, scores: torch.Tensor, levels: torch.Tensor,
                               image_sizes: list[tuple[int, int]], post_topk: int) -> PaddedBoxes:
        """The per-image steps of :meth:`propose` (clip, drop small boxes, NMS per level, keep the best
        ``post_topk``) for the whole training batch: clipping and the size test at once, then one NMS
        call per image over its levels shifted apart. The result is padded to ``post_topk`` boxes per
        image (fewer only if the levels hold fewer candidates), with a mask of the real ones: a shape
        that the config sets, so that nothing after the RPN depends on the data for its shapes.

        One NMS per image, not one for the batch: torchvision's kernel compares every pair of boxes
        it is given and, on a GPU, then walks the kept ones in a single thread, so one call over B
        images costs about B times the B calls (0.6 s of a 0.7 s step at batch 16 on an H200). Each
        call's output size is a host sync on a GPU, B per step, as in torchvision's detector.

        The same boxes as image by image: small boxes are scored below every sigmoid instead of being
        removed (NMS visits them last, so they suppress nothing that is kept) and dropped after; the
        shift and the NMS run in float64, where adding the integer shifts to float32 coordinates is
        exact. Inference and the traced and exported graphs keep the per-image form, torchvision's own."""
        num_images, per_image = scores.shape
        height = max(size[0] for size in image_sizes) + 1
        limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype).to(boxes.device)
        boxes = torch.min(boxes.clamp(min=0), limits[:, None, :])  # clip_boxes_to_image's bounds
        min_size = max(self.min_size, 1e-3)  # degenerate boxes (clipped to nothing) always go
        large = ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
        # Levels apart along y: no box of one level overlaps one of another.
        shift = (levels[:, None] * height * torch.tensor([0, 1, 0, 1], device=levels.device)).double()
        shifted = boxes.double() + shift
        ranked = torch.where(large, scores, -1.0).double()
        # Each image's kept boxes in NMS's (score) order: its large ones first, then small ones, dropped below.
        keeps = [nms(image_boxes, image_scores, self.nms_thresh)[:post_topk]
                 for image_boxes, image_scores in zip(shifted.unbind(), ranked.unbind())]
        index = pad_sequence(keeps, batch_first=True, padding_value=-1)
        index = F.pad(index, (0, min(post_topk, per_image) - index.shape[1]), value=-1)
        index, valid = index.clamp(min=0), index >= 0
        valid = valid & large.gather(1, index)
        kept_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
        return PaddedBoxes(torch.where(valid[..., None], kept_boxes, 0.0), valid)

    def anchor_labels(self, anchors: torch.Tensor, targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(each anchor's GT index (N, A), its label FOREGROUND / BACKGROUND / IGNORE (N, A), the padded
        GT boxes (N, G, 4)) for a batch of images of (height, width) ``image_sizes``. With
        ``boundary_thresh`` >= 0, anchors crossing an image's border are ignored and left out of its
        matching, as Faster R-CNN drops them first: a GT box whose best anchor crosses the border then
        claims its best anchor inside the image."""
        device = anchors.device
        gt_boxes, gt_valid = pad_boxes([t["boxes"] for t in targets], device)
        crowd = None
        if any("crowd_boxes" in t for t in targets):
            crowd = pad_boxes([t.get("crowd_boxes", anchors.new_zeros(0, 4)) for t in targets], device)
        inside = None
        if self.boundary_thresh >= 0:
            inside = ~crossing_border(anchors[None], image_extents(image_sizes, device), self.boundary_thresh)
        matched, labels = self.matcher.match_batch(anchors, gt_boxes, gt_valid, crowd, inside)
        return matched, labels, gt_boxes

    def losses(self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
               image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Objectness over each image's sampled anchors and box regression over its sampled positives,
        both summed over the batch and divided by the number of sampled anchors."""
        matched, labels, gt_boxes = self.anchor_labels(anchors, targets, image_sizes)
        priorities = random_priorities(len(targets), anchors.shape[0], [t.get("generator") for t in targets],
                                       anchors.device)
        index, valid, positive = sample_balanced_batch(labels, self.batch_size_per_image, self.positive_fraction,
                                                       priorities)
        num_sampled = valid.sum().clamp(min=1)
        sampled_logits = logits.gather(1, index)
        objectness = F.binary_cross_entropy_with_logits(sampled_logits, positive.to(logits.dtype), reduction="none")
        objectness = torch.where(valid, objectness, 0.0).sum() / num_sampled
        sampled_anchors = anchors[index]  # (N, S, 4)
        sampled_gt = gt_boxes.gather(1, matched.gather(1, index)[..., None].expand(-1, -1, 4))
        # Slots that are not positives regress their anchor onto itself (a zero target), masked out below.
        sampled_gt = torch.where(positive[..., None], sampled_gt, sampled_anchors)
        box_targets = self.box_coder.encode(sampled_anchors.reshape(-1, 4), sampled_gt.reshape(-1, 4))
        sampled_deltas = deltas.gather(1, index[..., None].expand(-1, -1, 4))
        box = F.smooth_l1_loss(sampled_deltas, box_targets.view_as(sampled_deltas), beta=self.smooth_l1_beta,
                               reduction="none")
        box = torch.where(positive[..., None], box, 0.0).sum() / num_sampled
        return {"loss_rpn_cls": objectness * self.loss_weight, "loss_rpn_box": box * self.loss_weight}


def image_extents(image_sizes: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's (height (N, 1), width (N, 1)), to compare with (N, A) anchor coordinates."""
    sizes = torch.tensor(image_sizes, dtype=torch.float32).to(device)
    return sizes[:, 0:1], sizes[:, 1:2]
