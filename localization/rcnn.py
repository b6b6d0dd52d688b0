"""The R-CNN stage of the paper's localization entry (App. C, "RPN+RCNN"), on top of a trained per-class RPN:
the network and its per-class box selection. Its proposals are in localization/rcnn_proposals.py, its training
samples in localization/data/rcnn_rois.py, its evaluation in localization/evaluation/rcnn_evaluation.py.

Network. A backbones ResNet, global average pooling and two sibling fc layers: cls with K+1 outputs (a
softmax over the K classes and background) and reg with K x 4 (class-specific deltas, BoxCoder with weights
(10, 10, 5, 5)). The paper leaves sigmoid vs softmax open; the softmax is chosen because training sees only
the GT class's proposals: background RoIs are what teaches the network to score a box low, and a (K+1)-way
softmax learns that from them directly, as the original R-CNN's fine-tuning did.

Losses: cross-entropy over K+1, and smooth L1 on the GT class's deltas of the foreground RoIs; both are
averaged over the batch's RoIs.

Testing. For each class that needs a box (the top-5 ranked classes and the GT classes), all of its proposals
are warped and scored; the box is the proposal with the highest softmax probability of that class, moved by
that class's deltas (no NMS, no voting). Its score is that probability.
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
from detection.modeling.box_coder import BoxCoder

from .config import LocalizerRCNNConfig
from .data.rcnn_rois import warp_regions


class RCNNLocalizer(ClassifierInput, nn.Module):
    """Warped RoIs -> (K+1)-way class logits and K x 4 class-specific deltas.

    Training input: samples of :class:`RoITrainDataset`; output {"loss_cls", "loss_box"}. ``rules``: the
    ``rcnn`` section of the config (the losses and the deltas' divisors bbox_reg_weights)."""

    def __init__(self, backbone: ResNet, num_classes: int, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 input_format: str, rules: LocalizerRCNNConfig):
        super().__init__()
        if "res5" not in backbone.out_features:
            raise ValueError("the R-CNN trunk must return res5")
        self.backbone = backbone
        self.num_classes = num_classes
        channels = backbone.out_channels["res5"]
        self.cls_score = nn.Linear(channels, num_classes + 1)
        self.bbox_pred = nn.Linear(channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)  # deltas start near 0: the proposal itself
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.set_input_normalization(pixel_mean, pixel_std, input_format)
        self.rules = rules
        self.coder = BoxCoder(weights=tuple(rules.bbox_reg_weights))

    def head(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized crops -> class logits (R, K+1) and deltas (R, K, 4)."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.backbone(crops)["res5"], 1), 1)
        return self.cls_score(pooled), self.bbox_pred(pooled).view(-1, self.num_classes, 4)

    def forward(self, batch: list[dict]):
        logits, deltas = self.head(self.normalize(torch.cat([s["crops"] for s in batch])))
        if not self.training:
            return logits, deltas
        classes = torch.cat([s["classes"] for s in batch]).to(self.device)
        targets = torch.cat([s["box_targets"] for s in batch]).to(self.device)
        loss_cls = F.cross_entropy(logits.float(), classes)
        foreground = torch.nonzero(classes > 0).flatten()
        if foreground.numel() == 0:
            loss_box = deltas.sum() * 0.0  # keeps the graph identical on every process
        else:
            chosen = deltas[foreground, classes[foreground] - 1].float()
            loss_box = F.smooth_l1_loss(chosen, targets[foreground], beta=self.rules.smooth_l1_beta,
                                        reduction="sum") / classes.numel()
        return {"loss_cls": loss_cls, "loss_box": self.rules.box_loss_weight * loss_box}

    @torch.no_grad()
    def rescore(self, image: torch.Tensor, proposals: torch.Tensor, classes: Sequence[int],
                chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Class c = classes[i] gets the best of its proposals ``proposals[i]`` (n, 4), re-scored and regressed:
        continuous boxes (C, 4) in the image and their class probabilities (C,). ``image``: uint8 (3, H, W)."""
        return best_of_proposals(*self.class_predictions(image, proposals, classes, chunk))

    @torch.no_grad()
    def class_predictions(self, image: torch.Tensor, proposals: torch.Tensor, classes: Sequence[int],
                          chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Every proposal re-scored and regressed for its own class: row i holds class classes[i]'s proposals
        ``proposals[i]`` (n, 4); -> their probabilities of that class (C, n) and their boxes decoded with that
        class's deltas (C, n, 4), continuous, in the image. The warp (rcnn.warp_size, rcnn.context_pad) is the
        one this network was trained with."""
        count, per_class = proposals.shape[:2]
        pixels = image.to(self.device)[None].float()
        flat = proposals.reshape(-1, 4).to(self.device)
        probabilities, deltas = [], []
        for start in range(0, flat.shape[0], chunk):
            crops = warp_regions(pixels, [flat[start:start + chunk]], self.rules.warp_size, self.rules.context_pad)
            logits, chunk_deltas = self.head(self.normalize(crops))
            probabilities.append(logits.float().softmax(dim=1))
            deltas.append(chunk_deltas.float())
        probabilities = torch.cat(probabilities).view(count, per_class, -1)
        deltas = torch.cat(deltas).view(count, per_class, self.num_classes, 4)
        return class_scores_and_boxes(probabilities, deltas, flat.view(count, per_class, 4),
                                      torch.as_tensor(list(classes), device=self.device), self.coder)


def class_scores_and_boxes(probabilities: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor,
                           classes: torch.Tensor, coder: BoxCoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i holds class classes[i]'s n proposals (C, n, 4), their softmax (C, n, K+1) and deltas
    (C, n, K, 4) -> each proposal's probability of its row's class (column classes[i] + 1), (C, n), and its
    box decoded with that class's deltas, (C, n, 4)."""
    rows = torch.arange(classes.numel(), device=classes.device)
    scores = probabilities[rows, :, classes + 1]  # (C, n)
    class_deltas = deltas[rows, :, classes]  # (C, n, 4)
    boxes = coder.decode(class_deltas.reshape(-1, 4), proposals.reshape(-1, 4))
    return scores, boxes.view_as(proposals)


def best_of_proposals(scores: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (class), the box of its highest score: boxes (C, n, 4), scores (C, n) -> (C, 4), (C,)."""
    best_scores, best = scores.max(dim=1)
    return boxes[torch.arange(scores.shape[0], device=scores.device), best], best_scores


def best_box_per_class(probabilities: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor,
                       classes: torch.Tensor, coder: BoxCoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-class selection rule. Row i holds class classes[i]'s n proposals (C, n, 4), their softmax
    (C, n, K+1) and deltas (C, n, K, 4); the class's box is its proposal with the highest probability of that
    class (column classes[i] + 1), decoded with that class's deltas. -> boxes (C, 4), scores (C,)."""
    return best_of_proposals(*class_scores_and_boxes(probabilities, deltas, proposals, classes, coder))


def build_rcnn(cfg, num_classes: int, load_backbone_weights: bool = True) -> RCNNLocalizer:
    """The R-CNN of a ``task: rcnn`` config; ``model.backbone.weights`` (the classifier) are loaded unless told
    not to."""
    backbone_cfg = cfg.model.backbone if load_backbone_weights else backbone_without_weights(cfg.model.backbone)
    backbone = build_from_config(backbone_cfg, out_features=["res5"])
    return RCNNLocalizer(backbone, num_classes, list(cfg.input.pixel_mean), list(cfg.input.pixel_std),
                         cfg.input.format, OmegaConf.to_object(cfg.rcnn))
