"""The ResNet family of "Deep Residual Learning for Image Recognition", importable by any project.

    from backbones import resnet101
    model = resnet101(weights="resnet101.pth", out_features=["res4", "res5"])
    features = model(images)          # {"res4": ..., "res5": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .errors import BackboneError, WeightsError
from .fuse import fold_conv_norm, fold_frozen_bn
from .norm import NORMS, FrozenBatchNorm2d, make_norm
from .resnet import ARCHITECTURES, FEATURE_NAMES, STAGE_NAMES, FeatureInfo, FeatureListNet, ResNet
from .weights import load_weights, read_state_dict

__all__ = [
    "ARCHITECTURES", "BackboneError", "FEATURE_NAMES", "FeatureInfo", "FeatureListNet", "FrozenBatchNorm2d",
    "NORMS", "ResNet", "STAGE_NAMES", "WeightsError", "build_resnet", "create", "fold_conv_norm",
    "fold_frozen_bn", "load_weights", "make_norm", "read_state_dict", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152",
]


def build_resnet(depth: int = 50, weights: str | None = None, trust_pickle: bool = False, **kwargs) -> ResNet:
    """Build a ResNet of ``depth`` and load ``weights`` (a path or a ``torchvision:``/``timm:`` name).

    Keyword arguments are those of :class:`ResNet` (norm, freeze_at, out_features, num_classes,
    stride_in_1x1, shortcut, plain, preact). Freezing is applied after loading, so frozen BN
    layers hold the loaded statistics.
    """
    freeze_at = kwargs.pop("freeze_at", 0)
    model = ResNet(depth, **kwargs)
    if weights:
        load_weights(model, weights, trust_pickle=trust_pickle)
    model.freeze(freeze_at)
    return model


def resnet18(weights: str | None = None, **kwargs) -> ResNet:
    return build_resnet(18, weights, **kwargs)


def resnet34(weights: str | None = None, **kwargs) -> ResNet:
    return build_resnet(34, weights, **kwargs)


def resnet50(weights: str | None = None, **kwargs) -> ResNet:
    return build_resnet(50, weights, **kwargs)


def resnet101(weights: str | None = None, **kwargs) -> ResNet:
    return build_resnet(101, weights, **kwargs)


def resnet152(weights: str | None = None, **kwargs) -> ResNet:
    return build_resnet(152, weights, **kwargs)


def create(name: str, weights: str | None = None, features_only: bool = False,
           out_indices: int | Sequence[int] = (0, 1, 2, 3, 4), **kwargs) -> nn.Module:
    """Build by name, timm style: ``create("resnet101", weights=PATH, features_only=True)``.

    ``out_indices`` means what it means in timm: 0 = act1 (stride 2), 1..4 = res2..res5 (strides
    4..32), negative from the end, an int n the last n maps; ``feature_info`` describes them.
    """
    depth_text = name.removeprefix("resnet")
    if not depth_text.isdigit():
        raise BackboneError(f"unknown model '{name}': choose one of " + ", ".join(f"resnet{d}" for d in ARCHITECTURES))
    if not features_only:
        kwargs.setdefault("num_classes", 1000)
        return build_resnet(int(depth_text), weights, **kwargs)
    return FeatureListNet(build_resnet(int(depth_text), weights, **kwargs), out_indices)
