"""Feature extractors for the two detector designs: the C4 trunk and ResNet + FPN.

The ResNet is this toolkit's own (backbones/) or, with ``model.backbone.timm_name``, a timm model.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from backbones import BackboneError, ResNet, WeightsError
from backbones.weights import read_state_dict, resolve_weights, strip_prefixes


class ResNetFPN(nn.Module):
    """ResNet stages ``in_features`` through torchvision's FeaturePyramidNetwork, plus P6 by max-pooling P5.

    Outputs are named after their stride: "p2" (4) .. "p5" (32) and "p6" (64).
    """

    def __init__(self, body: ResNet | TimmFeatures, in_features: Sequence[str], out_channels: int):
        super().__init__()
        self.body = body
        self.in_features = list(in_features)
        self.fpn = FeaturePyramidNetwork([body.out_channels[f] for f in self.in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        levels = [int(f[-1]) for f in self.in_features]
        self.out_features = [f"p{level}" for level in levels] + [f"p{levels[-1] + 1}"]
        self.out_channels = {name: out_channels for name in self.out_features}
        self.out_strides = {name: 2 ** int(name[1:]) for name in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            pyramid = self.fpn(OrderedDict((name, features[name]) for name in self.in_features))
            return dict(zip(self.out_features, pyramid.values()))
        # torchvision's FeaturePyramidNetwork.forward with the top-down sum done in place, and each
        # stage's map let go once its lateral is computed (at inference res2's is the largest map
        # alive while P2 is computed: 56 MB at 800x1088).
        maps = [features.pop(name) for name in self.in_features]
        del features
        inner = self.fpn.inner_blocks[-1](maps.pop())
        outputs = [self.fpn.layer_blocks[-1](inner)]
        for level in range(len(maps) - 1, -1, -1):
            inner = add_upsampled_(self.fpn.inner_blocks[level](maps.pop()), inner)
            outputs.insert(0, self.fpn.layer_blocks[level](inner))
        outputs.append(F.max_pool2d(outputs[-1], 1, 2, 0))  # P6, as LastLevelMaxPool
        return dict(zip(self.out_features, outputs))


def add_upsampled_(lateral: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``lateral += interpolate(top, size=lateral's, mode="nearest")``, in place.

    For the usual exact 2x the upsampling is a broadcast over 2x2 blocks: no upsampled map is
    allocated (at P2 that and the out-of-place sum were two 56 MB maps per 800x1088 image)."""
    n, channels, height, width = lateral.shape
    if (height, width) == (2 * top.shape[-2], 2 * top.shape[-1]):
        blocks = lateral.view(n, channels, height // 2, 2, width // 2, 2)
        blocks += top.view(n, channels, height // 2, 1, width // 2, 1)
        return lateral
    return lateral.add_(F.interpolate(top, size=(height, width), mode="nearest"))


# -- timm backbones (model.backbone.timm_name) ------------------------------------------------------
# timm is imported inside the functions: importing it takes a second or two, and only these
# configurations need it.

# Children that a timm ResNet runs, in this order, before global pooling (timm.models.ResNet).
TIMM_RESNET_TRUNK = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3")
# Our feature names and the stride each one must have; timm's feature index of "resN" is N - 1.
LEVEL_OF_FEATURE = {"res2": 2, "res3": 3, "res4": 4, "res5": 5}
TIMM_NORMS = ("frozen_bn", "bn", "syncbn")


class TimmFeatures(nn.Module):
    """A timm ``features_only`` network with this toolkit's backbone interface.

    Returns ``{"res2": ..., "res5": ...}`` like :class:`backbones.ResNet`, with ``out_channels`` and
    ``out_strides`` read from timm's ``feature_info`` (so that the FPN gets the right widths).
    """

    def __init__(self, net: nn.Module, names: Sequence[str]):
        super().__init__()
        self.net = net
        self.out_features = list(names)
        self.out_channels = dict(zip(self.out_features, net.feature_info.channels()))
        self.out_strides = dict(zip(self.out_features, net.feature_info.reduction()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.out_features, self.net(x)))


class TimmC4Trunk(nn.Module):
    """conv1 .. layer3 of a timm ResNet (stride 16) for the C4 design; layer4 lives in the RoI head."""

    def __init__(self, body: nn.Sequential, channels: int, stride: int):
        super().__init__()
        self.body = body
        self.out_features = ["res4"]
        self.out_channels = {"res4": channels}
        self.out_strides = {"res4": stride}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res4": self.body(x)}


def build_timm_features(backbone_cfg, in_features: Sequence[str]) -> TimmFeatures:
    """The FPN body: ``timm.create_model(timm_name, features_only=True)`` with one output per feature."""
    name = backbone_cfg.timm_name
    names = sorted(in_features, key=_feature_level)
    out_indices = [_feature_level(feature) - 1 for feature in names]
    net = _create_timm(name, features_only=True, out_indices=out_indices)
    strides = net.feature_info.reduction()
    wanted = [2 ** _feature_level(feature) for feature in names]
    if list(strides) != wanted:
        raise BackboneError(f"timm model '{name}' gives strides {list(strides)} at feature indices {out_indices}, "
                            f"but model.fpn.in_features={names} need {wanted}: use a ResNet-family timm model")
    stage_modules = [entry["module"].replace(".", "_") for entry in net.feature_info.info[1:5]]
    net = _prepare_timm(net, backbone_cfg, stage_modules)
    return TimmFeatures(net, names)


def build_timm_c4(backbone_cfg) -> tuple[TimmC4Trunk, nn.Module, int]:
    """The C4 trunk (conv1 .. layer3), the res5 stage for the RoI head and its output channels."""
    name = backbone_cfg.timm_name
    model = _create_timm(name, num_classes=0)  # no classifier: the detector has its own
    children = dict(model.named_children())
    if not all(part in children for part in (*TIMM_RESNET_TRUNK, "layer4")):
        raise BackboneError(f"model.arch=c4 with model.backbone.timm_name='{name}' needs a timm ResNet with "
                            f"conv1/bn1/act1/maxpool and layer1..layer4; use model.arch=fpn for this model")
    model = _prepare_timm(model, backbone_cfg, ["layer1", "layer2", "layer3", "layer4"])
    children = dict(model.named_children())  # freezing may have replaced modules
    info = {entry["module"]: entry for entry in model.feature_info}
    body = nn.Sequential(OrderedDict((part, children[part]) for part in TIMM_RESNET_TRUNK))
    trunk = TimmC4Trunk(body, info["layer3"]["num_chs"], info["layer3"]["reduction"])
    return trunk, children["layer4"], info["layer4"]["num_chs"]


def _feature_level(feature: str) -> int:
    if feature not in LEVEL_OF_FEATURE:
        raise BackboneError(f"model.fpn.in_features: unknown feature '{feature}' for a timm backbone: "
                            f"choose from {', '.join(LEVEL_OF_FEATURE)}")
    return LEVEL_OF_FEATURE[feature]


def _create_timm(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with random weights (ours are loaded from model.backbone.weights)."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise BackboneError(f"model.backbone.timm_name: timm has no model '{name}' ({hint})")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BackboneError(f"timm cannot build '{name}' as a backbone ({reason})") from None


def _prepare_timm(model: nn.Module, backbone_cfg, stage_modules: Sequence[str]) -> nn.Module:
    """Load the weights, then apply norm and freeze_at: the order of backbones.build_resnet, so
    that frozen BatchNorm layers hold the loaded statistics."""
    from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
    from timm.utils import freeze

    if backbone_cfg.norm not in TIMM_NORMS:
        raise BackboneError(f"model.backbone.norm={backbone_cfg.norm} is not available with timm_name: "
                            f"choose {', '.join(TIMM_NORMS)}")
    if backbone_cfg.weights:
        load_timm_weights(model, backbone_cfg.weights, backbone_cfg.timm_name, backbone_cfg.trust_pickle)
    if backbone_cfg.norm == "frozen_bn":
        # timm's converter also handles its BatchNormAct2d (norm + activation in one layer).
        model = freeze_batch_norm_2d(model)
    elif backbone_cfg.norm == "syncbn":
        model = convert_sync_batchnorm(model)
    frozen = _frozen_children(model, stage_modules, backbone_cfg.freeze_at)
    if frozen:
        freeze(model, submodules=frozen, include_bn_running_stats=True)
    return model


def _frozen_children(model: nn.Module, stage_modules: Sequence[str], freeze_at: int) -> list[str]:
    """Top-level children that ``freeze_at`` freezes: 1 = the stem (everything before res2's
    module), k = the stem and the first k-1 stages, as for backbones.ResNet."""
    if not 0 <= freeze_at <= 5:
        raise BackboneError(f"freeze_at must be between 0 and 5, got {freeze_at}")
    if freeze_at == 0:
        return []
    names = [name for name, _ in model.named_children()]
    if stage_modules[0] not in names:
        raise BackboneError(f"cannot apply freeze_at to this timm model: its first stage '{stage_modules[0]}' "
                            f"is not among its modules {names}")
    first_trainable = stage_modules[freeze_at - 1] if freeze_at <= len(stage_modules) else None
    # A stage missing from a features_only net was cut off after the last requested feature.
    end = names.index(first_trainable) if first_trainable in names else len(names)
    return names[:end]


def load_timm_weights(model: nn.Module, spec: str, timm_name: str, trust_pickle: bool = False) -> None:
    """Load a timm state dict (a path, or ``timm:NAME`` from the Hugging Face cache) into ``model``.

    Keys of top-level modules that hold nothing in ``model`` (the classifier, stages cut off by
    features_only) are skipped; any other difference is an error naming the file and the keys.
    """
    if str(spec).startswith("torchvision:"):
        raise WeightsError(f"model.backbone.weights={spec} names torchvision's ResNet weights; with timm_name "
                           f"give a timm state dict file or timm:NAME (e.g. timm:{timm_name})")
    path = resolve_weights(spec, None)
    own = model.state_dict()
    state = strip_prefixes(read_state_dict(path, trust_pickle=trust_pickle), set(own))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state = _rename_to_flattened(state, set(own))
    holders = {k.split(".")[0] for k in own}  # top-level modules with parameters or buffers
    expected = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in own and k.split(".")[0] in holders]
    mismatched = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
                  for k in expected if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        problems = [_key_summary("missing", missing), _key_summary("unexpected", unexpected),
                    _key_summary("shape mismatch", mismatched)]
        raise WeightsError(f"{path} does not fit timm model '{timm_name}': "
                           + "; ".join(p for p in problems if p))
    model.load_state_dict({k: state[k] for k in expected}, strict=False)


def _rename_to_flattened(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Rename file keys to the names of a features_only net, which lifts the children of top-level
    Sequential modules one level up: "stages.0.x" in the file is "stages_0.x" in the net (ResNetV2)."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        lifted = "_".join(parts[:2]) + "." + ".".join(parts[2:]) if len(parts) > 2 else key
        renamed[lifted if key not in own and lifted in own else key] = value
    return renamed


def _key_summary(kind: str, keys: Sequence[str], shown: int = 3) -> str:
    if not keys:
        return ""
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)} {kind} ({', '.join(keys[:shown])}{more})"
