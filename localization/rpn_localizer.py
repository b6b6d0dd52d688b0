"""The per-class RPN localizer of the paper's ImageNet localization entry (Appendix C).

Network: a ResNet trunk up to ``model.feature`` (res5 by default: the most class-specific features, and
ImageNet objects are large enough for a stride of 32), a 3x3 conv with ReLU, and two sibling 1x1 convs that
are both per class. With A anchors per position (3 sizes x 3 ratios) and K classes:

* cls: A*K channels; channel ``a*K + k`` is the logit of an independent sigmoid "anchor a here holds an
  object of class k" (no softmax over classes);
* reg: A*K*4 channels; channels ``(a*K + k)*4 .. +3`` are class k's (dx, dy, dw, dh) for anchor a, in the
  Faster R-CNN parameterisation (detection/modeling/box_coder.py, unit weights).

Training, per image of a batch of crops (input.crop, 224 on ImageNet):

1. the image's GT boxes (all of its one class) are clipped to the crop; a box with less than
   ``rpn.min_visible`` of its area left is no target, and anchors lying mostly inside its cut remnant are
   ignored rather than taken as background;
2. anchors with IoU >= fg_iou_thresh (0.7) with a GT box are positive, and so is the best anchor of each GT
   box (ties included); IoU < bg_iou_thresh (0.3) is negative; the rest is ignored (detection's Matcher);
   Anchors that cross the crop's border are kept (Faster R-CNN ignores them in training): the 256-px
   anchors are larger than a 224 crop, and ignoring them would leave that size without any;
3. ``rpn.anchors_per_image`` (8) anchors are sampled, at most ``positive_fraction`` (half) positive, the
   rest negative (as the detectors' RPN fills an image): a crop with fewer positive anchors than half, the
   usual case with the one object of an ImageNet crop, gives more negatives than positives, where the
   paper states 1:1 without saying how such an image is filled;
4. cls loss: binary cross-entropy on the sampled anchors. An anchor is positive only for the image's class:
   its target is 1 for that class and 0 for every other. With ``rpn.cls_loss_classes=all`` every class's
   sigmoid of a sampled anchor is trained (so the per-class scores can also rank classes); with ``gt`` only
   the GT class's. Summed over classes, averaged over the sampled anchors;
5. box loss: smooth L1 on the positives' GT-class deltas only (the other classes' box outputs get no
   gradient), summed over the 4 coordinates and averaged over the sampled anchors.

One box per class (testing). For class k: among all anchors of all test views (every position, every anchor
shape, every scale, and the mirrored images when asked), take the one with the highest class-k logit;
apply class k's deltas of that same anchor; map the box back to the original image (undo the flip, add the
crop offset, divide by the resize factor of each axis), clip it to the image and turn it into inclusive
pixel indices (xmax = x2 - 1). Class k's score is that highest sigmoid. No NMS and no averaging: a single
anchor decides.

Test views: "1crop" is the centre input.crop square of the image resized to test.resize; "dense" runs the
network fully convolutionally on the whole image with its shorter side at each test.dense_scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from backbones import ResNet
from backbones.config import build_from_config
from classification.classifier import ClassifierInput
from classification.config import backbone_without_weights
from detection.modeling.anchors import cell_anchors, shifted_anchors
from detection.modeling.box_coder import BoxCoder
from detection.modeling.matching import FOREGROUND, Matcher, sample_balanced

from .config import LocalizerTrainConfig
from .data.loc_dataset import ViewGeometry, to_original_image, with_mirror_images


def grid_anchors(cell: torch.Tensor, feature_size: tuple[int, int], stride: int) -> torch.Tensor:
    """(h*w*A, 4) anchors, position-major (row, column) then anchor, as the head's outputs are laid out.

    The stride is the trunk's, not image_size // feature_size, which differs for sizes that are not
    multiples of the stride (dense testing)."""
    return shifted_anchors(cell, feature_size, (stride, stride))


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, cut_boxes: torch.Tensor,
                  matcher: Matcher) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched GT index, label 1 / 0 / -1) per anchor for one image's boxes (all of its one class)."""
    return matcher(anchors, gt_boxes, crowd_boxes=cut_boxes)


def class_targets(labels: torch.Tensor, gt_class: int, num_classes: int) -> torch.Tensor:
    """(N, K) sigmoid targets: 1 only at (positive anchor, the image's class), 0 everywhere else."""
    targets = torch.zeros(labels.numel(), num_classes, device=labels.device)
    targets[labels == FOREGROUND, gt_class] = 1.0
    return targets


def best_box_per_class(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                       coder: BoxCoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-box-per-class rule on one view: (K, 4) boxes in view pixels (x2 exclusive) and (K,) logits.

    ``logits`` (N, K), ``deltas`` (N, K, 4) and ``anchors`` (N, 4) cover the view's N anchors.
    """
    scores, best = logits.max(dim=0)  # per class, the anchor with the highest logit
    classes = torch.arange(logits.shape[1], device=logits.device)
    boxes = coder.decode(deltas[best, classes], anchors[best])
    return boxes, scores


def merge_views(per_view: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the box of the view whose best anchor scored highest: (K, 4) boxes, (K,) logits."""
    boxes = torch.stack([b for b, _ in per_view])  # (V, K, 4)
    scores = torch.stack([s for _, s in per_view])  # (V, K)
    best_scores, best_view = scores.max(dim=0)
    classes = torch.arange(scores.shape[1], device=scores.device)
    return boxes[best_view, classes], best_scores


class OneBoxPerClass:
    """The testing side of a per-class RPN, on whatever provides ``normalize``, ``head`` and ``coder`` with
    :class:`RPNLocalizer`'s meaning: one network, or several averaged (localization/ensemble.py)."""

    @torch.no_grad()
    def class_boxes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, H, W) views -> per class the best anchor's box (B, K, 4) in view pixels (x2
        exclusive) and its logit (B, K)."""
        logits, deltas, anchors = self.head(self.normalize(images))
        results = [best_box_per_class(logits[i].float(), deltas[i].float(), anchors, self.coder)
                   for i in range(images.shape[0])]
        return torch.stack([b for b, _ in results]), torch.stack([s for _, s in results])

    @torch.no_grad()
    def localize(self, views: Sequence[torch.Tensor], geometries: Sequence[ViewGeometry],
                 image_size: tuple[int, int], flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """All views (uint8 (3, h, w)) of one image -> (K, 4) inclusive boxes in the original image and (K,)
        sigmoid scores, by the one-box-per-class rule over every view (and its mirror image when ``flip``)."""
        per_view = []
        for pixels, geometry in with_mirror_images(views, geometries, flip):
            boxes, scores = self.class_boxes(pixels[None])
            per_view.append((to_original_image(boxes[0], geometry, pixels.shape[-1], image_size), scores[0]))
        boxes, scores = merge_views(per_view)
        return boxes.cpu(), scores.sigmoid().cpu()


class RPNLocalizer(ClassifierInput, OneBoxPerClass, nn.Module):
    """Input in training: samples {"image": uint8 (3, c, c) RGB, "label": int, "boxes": (n, 4) float crop
    pixels with x2 exclusive, "cut_boxes": (m, 4)}; output {"loss_cls", "loss_box"}.
    At test time see :meth:`class_boxes`. ``rules``: the ``rpn`` section of the config (label assignment,
    sampling and the losses).
    """

    def __init__(self, backbone: ResNet, feature: str, num_classes: int, head_channels: int,
                 anchor_sizes: Sequence[float], aspect_ratios: Sequence[float], pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], input_format: str, rules: LocalizerTrainConfig):
        super().__init__()
        if feature not in backbone.out_features:
            raise ValueError(f"the trunk must return {feature}")
        self.backbone = backbone
        self.feature = feature
        self.stride = backbone.out_strides[feature]
        self.num_classes = num_classes
        self.register_buffer("cell", cell_anchors(anchor_sizes, aspect_ratios), persistent=False)
        self.num_anchors = self.cell.shape[0]
        self.conv = nn.Conv2d(backbone.out_channels[feature], head_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(head_channels, self.num_anchors * num_classes, 1)
        self.bbox_deltas = nn.Conv2d(head_channels, self.num_anchors * num_classes * 4, 1)
        self._init_head()
        self.set_input_normalization(pixel_mean, pixel_std, input_format)
        self.rules = rules
        self.matcher = Matcher(rules.fg_iou_thresh, rules.bg_iou_thresh, allow_low_quality=True)
        self.coder = BoxCoder()

    def _init_head(self) -> None:
        for conv in (self.conv, self.cls_logits, self.bbox_deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # Start every sigmoid near 0.01: with K classes per anchor almost all targets are 0, and a 0.5 start
        # would spend the first iterations only pushing K-1 outputs down.
        nn.init.constant_(self.cls_logits.bias, -4.6)

    # -- shared (and normalize, the classifier's input arithmetic) ------------------------------------
    def head(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized (B, 3, H, W) -> logits (B, N, K), deltas (B, N, K, 4), anchors (N, 4); N = h*w*A."""
        features = F.relu(self.conv(self.backbone(images)[self.feature]))
        batch, _, height, width = features.shape
        anchors, classes = self.num_anchors, self.num_classes
        # Channel a*K + k -> (position, anchor, class), matching the anchors' position-major order.
        logits = self.cls_logits(features).view(batch, anchors, classes, height, width)
        logits = logits.permute(0, 3, 4, 1, 2).reshape(batch, -1, classes)
        deltas = self.bbox_deltas(features).view(batch, anchors, classes, 4, height, width)
        deltas = deltas.permute(0, 4, 5, 1, 2, 3).reshape(batch, -1, classes, 4)
        return logits, deltas, grid_anchors(self.cell, (height, width), self.stride)

    # -- training ----------------------------------------------------------------------------------
    def forward(self, batch: list[dict]):
        images = self.normalize(torch.stack([sample["image"] for sample in batch]))
        logits, deltas, anchors = self.head(images)
        if not self.training:
            return logits, deltas, anchors
        cls_terms, box_terms, sampled = [], [], 0
        for index, sample in enumerate(batch):
            cls_loss, box_loss, count = self.image_losses(logits[index], deltas[index], anchors, sample)
            cls_terms.append(cls_loss)
            box_terms.append(box_loss)
            sampled += count
        normalizer = max(sampled, 1)
        return {"loss_cls": torch.stack(cls_terms).sum() / normalizer,
                "loss_box": self.rules.box_loss_weight * torch.stack(box_terms).sum() / normalizer}

    def image_losses(self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                     sample: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Summed cls and box losses of one image's sampled anchors, and how many were sampled."""
        gt_boxes = torch.as_tensor(sample["boxes"], dtype=torch.float32, device=anchors.device).reshape(-1, 4)
        cut = torch.as_tensor(sample.get("cut_boxes", ()), dtype=torch.float32, device=anchors.device)
        matched, labels = label_anchors(anchors, gt_boxes, cut.reshape(-1, 4), self.matcher)
        rules = self.rules
        # The sample's own stream, as the detector's: without it every process, seeded alike, would
        # pick the same anchor positions for its images, and the choice would depend on their number.
        generator = torch.Generator().manual_seed(int(sample["seed"])) if "seed" in sample else None
        positive, negative = sample_balanced(labels, rules.anchors_per_image, rules.positive_fraction, generator)
        chosen = torch.cat([positive, negative])
        gt_class = int(sample["label"])
        targets = class_targets(labels[chosen], gt_class, self.num_classes)
        chosen_logits = logits[chosen].float()
        if rules.cls_loss_classes == "gt":
            chosen_logits, targets = chosen_logits[:, gt_class], targets[:, gt_class]
        cls_loss = F.binary_cross_entropy_with_logits(chosen_logits, targets, reduction="sum")
        if positive.numel() == 0:
            box_loss = deltas.sum() * 0.0  # keeps the graph identical on every process
        else:
            box_targets = self.coder.encode(anchors[positive], gt_boxes[matched[positive]])
            box_loss = F.smooth_l1_loss(deltas[positive, gt_class].float(), box_targets,
                                        beta=rules.smooth_l1_beta, reduction="sum")
        return cls_loss, box_loss, int(chosen.numel())


def build_localizer(cfg, num_classes: int, load_backbone_weights: bool = True) -> RPNLocalizer:
    """The localizer of a localization config; ``model.backbone.weights`` are loaded unless told not to."""
    backbone_cfg = cfg.model.backbone if load_backbone_weights else backbone_without_weights(cfg.model.backbone)
    backbone = build_from_config(backbone_cfg, out_features=[cfg.model.feature])
    if cfg.model.feature == "res4":
        # res5 would never run: without it, distributed training has no parameter left without gradient.
        backbone.detach_stage("res5")
    return RPNLocalizer(backbone, cfg.model.feature, num_classes, cfg.model.head_channels,
                        list(cfg.model.anchor_sizes), list(cfg.model.aspect_ratios), list(cfg.input.pixel_mean),
                        list(cfg.input.pixel_std), cfg.input.format, OmegaConf.to_object(cfg.rpn))
