"""The ``model.backbone`` config section, usable as an omegaconf structured config."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import build_resnet
from .norm import NORMS
from .resnet import ARCHITECTURES, SHORTCUTS


@dataclass
class BackboneConfig:
    depth: int = field(default=50, metadata={"choices": tuple(ARCHITECTURES)})
    # A path to a torchvision/timm state dict, or "torchvision:IMAGENET1K_V2", "timm:resnet50.a1_in1k".
    weights: str | None = None
    norm: str = field(default="frozen_bn", metadata={"choices": NORMS})
    freeze_at: int = 2
    # True: the original MSRA bottleneck (stride on the first 1x1), as in the paper's FLOP counts.
    stride_in_1x1: bool = False
    shortcut: str = field(default="B", metadata={"choices": SHORTCUTS})
    # Each residual branch starts at zero (training from scratch): needs norm bn, syncbn or gn, since a
    # frozen_bn zero would never train; refused otherwise.
    zero_init_residual: bool = False
    # Channels of the stem and res2 (64 in the paper); narrower nets for quick CPU runs.
    base_width: int = 64
    # Caffe2 .pkl weights need unpickling: only with this explicit flag.
    trust_pickle: bool = False


def build_from_config(cfg, **kwargs):
    """Build the ResNet described by a ``model.backbone`` section (a dataclass or DictConfig)."""
    return build_resnet(
        cfg.depth, weights=cfg.weights, trust_pickle=cfg.trust_pickle, norm=cfg.norm,
        freeze_at=cfg.freeze_at, stride_in_1x1=cfg.stride_in_1x1, shortcut=cfg.shortcut,
        zero_init_residual=cfg.zero_init_residual, base_width=cfg.base_width, **kwargs,
    )
