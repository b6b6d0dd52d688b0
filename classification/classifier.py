"""The classifiers: an ImageNet ResNet or a CIFAR ResNet, global average pooling and a K-way fc.

Both train on the cross-entropy and report the top-1 error of each training batch (``train_error``, in
percent, computed in train mode on the augmented images as the paper's training curves are), which the
trainer logs and solver.warmup_until can follow; it is not trained on.

The ImageNet classifier is tested three ways:

* "1crop" / "10crop": the softmax of each crop's logits is averaged over the crops;
* "dense": the fully convolutional form of the paper (after Simonyan & Zisserman): the fc is applied as a
  1x1 convolution to the res5 map of the whole image, the class score map is averaged spatially, and the
  softmax is averaged over several scales (and their mirror images).

Because average pooling and the fc are both linear, the spatial mean of the fc-as-conv score map equals
the fc of the pooled features: dense testing at one scale, on an image the size of the crop, gives the
1-crop logits.

The ResNet (with its fc) is the ``backbone`` attribute, so a trained classifier's checkpoint is also a
backbone weights file for the detectors (``model.backbone.weights=output/cls/model_final.pth``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones import CifarResNet, ResNet, build_cifar_resnet
from backbones.config import build_from_config
from resnet_engine.trainer import LossesAndMetrics

from .config import backbone_without_weights, is_cifar, paper_network

TEST_MODES = ("1crop", "10crop", "dense")


class ClassifierInput:
    """The classifier's input arithmetic, shared by the localizers whose trunks start from its weights:
    uint8 or 0-255 float (B, 3, H, W) RGB images become (x / 255 - mean / 255) / (std / 255), torchvision's
    arithmetic, so that imported torchvision models see bit-identical inputs; a BGR network gets the
    channels reversed first. The statistics are buffers that are not saved: checkpoints hold the networks
    alone. Mixed into nn.Module subclasses, which call set_input_normalization in their __init__."""

    def set_input_normalization(self, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                                input_format: str) -> None:
        mean01 = torch.tensor(pixel_mean, dtype=torch.float64) / 255
        std01 = torch.tensor(pixel_std, dtype=torch.float64) / 255
        self.register_buffer("pixel_mean", mean01.float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std01.float().view(1, -1, 1, 1), persistent=False)
        self.input_format = input_format

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or 0-255 float (B, 3, H, W) RGB on any device -> the network's input on its device."""
        images = images.to(self.device, non_blocking=True).float() / 255
        if self.input_format == "BGR":
            images = images.flip(1)
        return (images - self.pixel_mean) / self.pixel_std


class Classifier(ClassifierInput, nn.Module):
    """Input: a list of samples {"image": uint8 (3, H, W) RGB, "label": int}, as the data loader yields.

    Output: {"loss_cls"} and {"train_error"} (:func:`training_outputs`) in training; the logits (B, K)
    otherwise.
    """

    def __init__(self, backbone: ResNet, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 input_format: str):
        super().__init__()
        if backbone.fc is None or "res5" not in backbone.out_features:
            raise ValueError("the classifier needs a ResNet built with num_classes and out_features=['res5']")
        self.backbone = backbone
        self.set_input_normalization(pixel_mean, pixel_std, input_format)

    @property
    def num_classes(self) -> int:
        return self.backbone.fc.out_features

    # -- building blocks ---------------------------------------------------------------------------
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier as trained: res5, global average pool, fc. ``images`` are normalized."""
        res5 = self.backbone(images)["res5"]
        return self.backbone.fc(torch.flatten(self.backbone.avgpool(res5), 1))

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        """The fc applied as a 1x1 convolution at every res5 position: (B, K, h, w)."""
        res5 = self.backbone(images)["res5"]
        fc = self.backbone.fc
        return F.conv2d(res5, fc.weight[:, :, None, None], fc.bias)

    # -- training ----------------------------------------------------------------------------------
    def forward(self, batch: list[dict]):
        images = self.normalize(torch.stack([sample["image"] for sample in batch]))
        logits = self.logits(images)
        if not self.training:
            return logits
        labels = torch.tensor([int(sample["label"]) for sample in batch], device=self.device)
        return training_outputs(logits, labels)

    # -- testing -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, images, mode: str, dense_flip: bool = False) -> torch.Tensor:
        """Class scores (B, K) whose softmax is the softmax averaged over the test views.

        Args:
            images: "1crop"/"10crop": uint8 (B, V, 3, h, w), V crops of each of B images.
                "dense": a sequence of uint8 (B, 3, H_s, W_s), the same B images at each scale
                (one image at a time when sizes differ).
            mode: "1crop", "10crop" or "dense".
            dense_flip: dense testing also scores the mirrored image at every scale.
        """
        if mode not in TEST_MODES:
            raise ValueError(f"unknown test mode {mode!r}: choose one of {', '.join(TEST_MODES)}")
        if mode == "dense":
            views = [self.score_map(self.normalize(v)).mean(dim=(2, 3)) for v in images]
            if dense_flip:
                views += [self.score_map(self.normalize(v.flip(-1))).mean(dim=(2, 3)) for v in images]
            return average_softmax(torch.stack(views, dim=1))
        batch, num_views = images.shape[:2]
        logits = self.logits(self.normalize(images.flatten(0, 1)))
        return average_softmax(logits.view(batch, num_views, -1))


class CifarClassifier(nn.Module):
    """A CIFAR ResNet (``backbone``, :class:`backbones.CifarResNet` with its fc) as a classifier.

    Input: {"images": float32 (B, 3, 32, 32), mean-subtracted, "labels": int64 (B,)}, as the CIFAR loaders
    yield. Output: {"loss_cls"} and {"train_error"} (:func:`training_outputs`) in training; the logits
    (B, K) otherwise. The test view is the image itself, so testing is :meth:`logits` of a batch.
    """

    def __init__(self, backbone: CifarResNet):
        super().__init__()
        if backbone.fc is None or backbone.out_features != ["logits"]:
            raise ValueError("the CIFAR classifier needs a CifarResNet built with num_classes and "
                             "out_features=['logits']")
        self.backbone = backbone

    @property
    def num_classes(self) -> int:
        return self.backbone.fc.out_features

    @property
    def device(self) -> torch.device:
        return self.backbone.fc.weight.device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images.to(self.device, non_blocking=True))["logits"]

    def forward(self, batch: dict):
        logits = self.logits(batch["images"])
        if not self.training:
            return logits
        return training_outputs(logits, batch["labels"].to(self.device))


def training_outputs(logits: torch.Tensor, labels: torch.Tensor) -> LossesAndMetrics:
    """The cross-entropy to train on, and the batch's top-1 error in percent, to log."""
    with torch.no_grad():
        wrong = (logits.argmax(dim=1) != labels).float().mean() * 100
    return LossesAndMetrics({"loss_cls": F.cross_entropy(logits, labels)}, {"train_error": wrong})


def average_softmax(view_logits: torch.Tensor) -> torch.Tensor:
    """(B, V, K) logits of V views -> (B, K) log of the mean softmax (log_softmax when V is 1).

    Computed in log space (log-sum-exp of the views' log-softmax, less log V): probabilities formed
    first underflow to 0 for classes far below the best one, and the top-5 of a confident network
    was then decided among ties."""
    log_probabilities = view_logits.float().log_softmax(dim=-1)
    return torch.logsumexp(log_probabilities, dim=1) - math.log(view_logits.shape[1])


def build_classifier(cfg, num_classes: int, load_backbone_weights: bool = True) -> Classifier | CifarClassifier:
    """The classifier of a classification config (an ImageNet or a CIFAR one, as ``data.dataset`` says);
    ``model.backbone.weights`` are loaded unless told not to."""
    backbone_cfg = cfg.model.backbone if load_backbone_weights else backbone_without_weights(cfg.model.backbone)
    variants = {"plain": backbone_cfg.plain, "preact": backbone_cfg.preact}
    if is_cifar(cfg):
        return CifarClassifier(build_cifar_resnet(
            backbone_cfg.depth, weights=backbone_cfg.weights, trust_pickle=backbone_cfg.trust_pickle,
            norm=backbone_cfg.norm, freeze_at=backbone_cfg.freeze_at, shortcut=backbone_cfg.shortcut,
            stride_in_1x1=backbone_cfg.stride_in_1x1, zero_init_residual=backbone_cfg.zero_init_residual,
            base_width=backbone_cfg.base_width, num_classes=num_classes, out_features=["logits"], **variants))
    backbone = build_from_config(backbone_cfg, num_classes=num_classes, out_features=["res5"], **variants)
    return Classifier(backbone, list(cfg.input.pixel_mean), list(cfg.input.pixel_std), cfg.input.format)


def network_name(cfg) -> str:
    """The network of a classification config as the paper's tables name it ("ResNet-56", "plain-20",
    "pre-act ResNet-164"), with its width when it is not the paper's."""
    backbone = cfg.model.backbone
    kind = "plain" if backbone.plain else ("pre-act ResNet" if backbone.preact else "ResNet")
    paper_width = paper_network(cfg)["base_width"]
    width = "" if backbone.base_width == paper_width else f" (width {backbone.base_width})"
    return f"{kind}-{backbone.depth}{width}"


def true_label_ranks(logits: torch.Tensor, labels: torch.Tensor, max_k: int = 5) -> torch.Tensor:
    """The position (0-based) of each true label among the top max_k scores; max_k when it is not there,
    or when the image's scores are not all finite (a NaN would rank as the best score: diverged weights
    would get errors near chance instead of 100%)."""
    top = logits.topk(min(max_k, logits.shape[1]), dim=1).indices
    hits = (top == labels.view(-1, 1).to(top.device)) & torch.isfinite(logits).all(dim=1, keepdim=True)
    first = hits.float().argmax(dim=1)
    # "Not found" is max_k even with fewer classes: a top-5 error then counts only those images.
    return torch.where(hits.any(dim=1), first, torch.full_like(first, max_k))


def errors_from_ranks(ranks, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k error in percent: the share of images whose true label is not among the k best scores."""
    ranks = torch.as_tensor(ranks)
    if ranks.numel() == 0:
        return {f"top{k}_err": float("nan") for k in ks}
    return {f"top{k}_err": float((ranks >= k).float().mean() * 100) for k in ks}


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1_err": ..., "top5_err": ...} in percent for (N, K) scores and (N,) labels."""
    return errors_from_ranks(true_label_ranks(logits, labels, max(ks)), ks)
