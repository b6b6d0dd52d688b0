"""The ResNet family of "Deep Residual Learning for Image Recognition", importable by any project.

    from backbones import create, resnet101
    model = resnet101(weights="resnet101.pth", out_features=["res4", "res5"])
    features = model(images)          # {"res4": ..., "res5": ...}

    cifar = create("resnet56_cifar", plain=True)   # the CIFAR nets of the paper's section 4.2
    logits = cifar(images32)["logits"]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

from .cifar import CIFAR_FEATURES, CIFAR_STAGES, CifarResNet
from .errors import BackboneError, WeightsError
from .fuse import fold_conv_norm, fold_frozen_bn
from .norm import NORMS, FrozenBatchNorm2d, make_norm
from .resnet import ARCHITECTURES, FEATURE_NAMES, STAGE_NAMES, FeatureInfo, FeatureListNet, ResNet
from .weights import load_weights, read_state_dict

__all__ = [
    "ARCHITECTURES", "BackboneError", "CIFAR_FEATURES", "CIFAR_STAGES", "CifarResNet", "FEATURE_NAMES",
    "FeatureInfo", "FeatureListNet", "FrozenBatchNorm2d", "NORMS", "ResNet", "STAGE_NAMES", "WeightsError",
    "build_cifar_resnet", "build_resnet", "create", "fold_conv_norm",
    "fold_frozen_bn", "load_weights", "make_norm", "read_state_dict", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152",
]


def build_resnet(depth: int = 50, weights: str | None = None, trust_pickle: bool = False, **kwargs) -> ResNet:
    """Build a ResNet of ``depth`` and load ``weights`` (a path or a ``torchvision:``/``timm:`` name).

    Keyword arguments are those of :class:`ResNet` (norm, freeze_at, out_features, num_classes,
    stride_in_1x1, shortcut, plain, preact). Freezing is applied after loading, so frozen BN
    layers hold the loaded statistics. ``norm`` defaults to :class:`ResNet`'s "frozen_bn" (the
    detectors' setting) with or without weights; :func:`resnet50` and :func:`create` choose by weights.
    """
    freeze_at = kwargs.pop("freeze_at", 0)
    model = ResNet(depth, **kwargs)
    if weights:
        load_weights(model, weights, trust_pickle=trust_pickle)
    model.freeze(freeze_at)
    return model


def warn_if_frozen_without_weights(norm: str | None, weights: str | None, stacklevel: int) -> None:
    """A frozen BN holds what weights load into it: without them it is the identity for good."""
    if norm == "frozen_bn" and not weights:
        warnings.warn("norm='frozen_bn' without weights: every BatchNorm is the identity and never trains; pass "
                      "weights= (or load_weights() before use), or norm='bn' to train from scratch",
                      stacklevel=stacklevel + 1)


def default_norm(kwargs: dict, weights: str | None) -> None:
    """The factories' norm: frozen at the loaded statistics with weights (the detectors' setting), a
    trainable BatchNorm without them (training from scratch, as torchvision's and timm's do)."""
    kwargs.setdefault("norm", "frozen_bn" if weights else "bn")


def _imagenet_resnet(depth: int, weights: str | None, kwargs: dict) -> ResNet:
    default_norm(kwargs, weights)
    warn_if_frozen_without_weights(kwargs["norm"], weights, stacklevel=3)
    return build_resnet(depth, weights, **kwargs)


def resnet18(weights: str | None = None, **kwargs) -> ResNet:
    """ResNet-18 (see :func:`resnet50`)."""
    return _imagenet_resnet(18, weights, kwargs)


def resnet34(weights: str | None = None, **kwargs) -> ResNet:
    """ResNet-34 (see :func:`resnet50`)."""
    return _imagenet_resnet(34, weights, kwargs)


def resnet50(weights: str | None = None, **kwargs) -> ResNet:
    """ResNet-50 returning ``{"res5": ...}`` unless ``out_features``/``num_classes`` say otherwise, with
    ``weights`` loaded (a path or a ``torchvision:``/``timm:`` name). Keyword arguments are those of
    :class:`ResNet`; ``norm`` defaults to "frozen_bn" with weights and to "bn" without."""
    return _imagenet_resnet(50, weights, kwargs)


def resnet101(weights: str | None = None, **kwargs) -> ResNet:
    """ResNet-101 (see :func:`resnet50`)."""
    return _imagenet_resnet(101, weights, kwargs)


def resnet152(weights: str | None = None, **kwargs) -> ResNet:
    """ResNet-152 (see :func:`resnet50`)."""
    return _imagenet_resnet(152, weights, kwargs)


def build_cifar_resnet(depth: int = 20, weights: str | None = None, trust_pickle: bool = False,
                       **kwargs) -> CifarResNet:
    """Build a CIFAR ResNet of ``depth`` and load ``weights`` (a file: no CIFAR weights are published
    under torchvision or timm names). Keyword arguments are those of :class:`CifarResNet`; freezing
    is applied after loading, as in :func:`build_resnet`."""
    freeze_at = kwargs.pop("freeze_at", 0)
    model = CifarResNet(depth, **kwargs)
    if weights:
        if str(weights).startswith(("torchvision:", "timm:")):
            raise WeightsError(f"no weights named '{weights}' exist for the CIFAR ResNets: pass a file "
                               "(a state dict, such as a CIFAR training run's model_final.pth)")
        load_weights(model, weights, trust_pickle=trust_pickle)
    model.freeze(freeze_at)
    return model


def create(name: str, weights: str | None = None, features_only: bool = False,
           out_indices: int | Sequence[int] | None = None, **kwargs) -> nn.Module:
    """Build by name, timm style: ``create("resnet101", weights=PATH, features_only=True)``,
    ``create("resnet56_cifar", plain=True)``, ``create("resnet164_cifar", preact=True)``.

    ``resnet18`` .. ``resnet200`` are the ImageNet family (1000 classes unless ``num_classes`` is
    given; ``norm`` "frozen_bn" with weights, "bn" without), ``resnet{depth}_cifar`` the CIFAR family
    (10 classes unless given; ``norm`` "bn"). ``out_indices`` means what it means in timm: 0 = act1,
    1.. = the stages (res2..res5 at strides 4..32 for ImageNet, stage1..stage3 at strides 1..4 for
    CIFAR), negative from the end, an int n the last n maps, None every map; ``feature_info``
    describes them.
    """
    depth_text = name.removeprefix("resnet")
    cifar = depth_text.endswith("_cifar")
    depth_text = depth_text.removesuffix("_cifar")
    if not name.startswith("resnet") or not depth_text.isdigit():
        raise BackboneError(f"unknown model '{name}': choose one of "
                            + ", ".join(f"resnet{d}" for d in ARCHITECTURES)
                            + ", or resnet{depth}_cifar (resnet20_cifar .. resnet1202_cifar, resnet164_cifar, ...)")
    build, default_classes = (build_cifar_resnet, 10) if cifar else (build_resnet, 1000)
    if not cifar:
        default_norm(kwargs, weights)
    warn_if_frozen_without_weights(kwargs.get("norm"), weights, stacklevel=2)
    if not features_only:
        if out_indices is not None:  # timm refuses it too; ignored, the classifier would come back unasked
            raise BackboneError("out_indices selects feature maps: pass features_only=True with it")
        kwargs.setdefault("num_classes", default_classes)
        return build(int(depth_text), weights, **kwargs)
    return FeatureListNet(build(int(depth_text), weights, **kwargs), out_indices)
