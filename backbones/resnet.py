"""The ResNet family of "Deep Residual Learning for Image Recognition" as one configurable class.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``), which
timm's ResNet also uses, so ImageNet checkpoints of either library load without renaming.
The paper's variants are constructor arguments:

* ``stride_in_1x1``: the original MSRA bottleneck puts the stride-2 on the first 1x1 conv;
  torchvision and timm put it on the 3x3 ("ResNet v1.5"), which costs more multiply-adds.
* ``shortcut``: "A" zero-padded identity, "B" projection where the shape changes, "C"
  projection everywhere (Table 3 of the paper).
* ``plain=True``: the same stack without any shortcut (the plain nets of Table 2 / Fig. 4).
* ``preact=True``: full pre-activation units (He et al., "Identity Mappings in Deep Residual
  Networks"): BN-ReLU-conv, the projection shortcut takes the pre-activated input, and one
  extra BN-ReLU follows the last unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError
from .norm import NORMS, FrozenBatchNorm2d, make_norm

# depth -> (block kind, units per stage)
ARCHITECTURES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
# "act1" is conv1 after its norm and ReLU (stride 2), "stem" the max-pooled map after it (stride 4).
FEATURE_NAMES = ("act1", "stem") + STAGE_NAMES + ("logits",)
# timm's features_only ResNet: out_indices 0..4 index these maps (strides 2, 4, 8, 16, 32).
TIMM_FEATURES = ("act1",) + STAGE_NAMES
SHORTCUTS = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity with spatial subsampling and zero-filled extra channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(
    kind: str, in_channels: int, out_channels: int, stride: int, norm: str, preact: bool
) -> nn.Module | None:
    """The shortcut branch of one unit, or None for a plain identity."""
    shape_changes = stride != 1 or in_channels != out_channels
    if kind == "A" and shape_changes:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "C" or (kind == "B" and shape_changes):
        conv = conv1x1(in_channels, out_channels, stride)
        # A pre-activation unit normalizes before its convs, so its projection has no norm.
        return nn.Sequential(conv) if preact else nn.Sequential(conv, make_norm(norm, out_channels))
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels, planes, stride, norm, shortcut, residual=True, stride_in_1x1=False):
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.downsample = shortcut
        self.residual = residual
        self.conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.residual:
            # In place: a map of the block's full size less to allocate (nothing saves it for backward).
            out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels, planes, stride, norm, shortcut, residual=True, stride_in_1x1=False):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, planes, stride_1x1)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = make_norm(norm, planes * self.expansion)
        # A module, so that the inference fast path can fuse it into conv2 (resnet_ops.winograd.fuse_relu).
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = shortcut
        self.residual = residual
        self.conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)  # in place, as in BasicBlock
        return F.relu(out, inplace=True)


class PreActBasicBlock(nn.Module):
    """Full pre-activation basic unit: (BN-ReLU-conv3x3) x 2, nothing after the addition."""

    expansion = 1

    def __init__(self, in_channels, planes, stride, norm, shortcut, residual=True, stride_in_1x1=False,
                 activate_input=True):
        super().__init__()
        # The first unit after the stem gets an already activated input (Identity Mappings, appendix).
        self.bn1 = make_norm(norm, in_channels) if activate_input else nn.Identity()
        self.activate_input = activate_input
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn2 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = shortcut
        self.residual = residual
        self.conv_norm_pairs = (("conv1", "bn2"),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x)) if self.activate_input else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(pre))
        return out


class PreActBottleneck(nn.Module):
    """Full pre-activation bottleneck unit: (BN-ReLU-conv) for the 1x1, 3x3 and 1x1 convs."""

    expansion = 4

    def __init__(self, in_channels, planes, stride, norm, shortcut, residual=True, stride_in_1x1=False,
                 activate_input=True):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = make_norm(norm, in_channels) if activate_input else nn.Identity()
        self.activate_input = activate_input
        self.conv1 = conv1x1(in_channels, planes, stride_1x1)
        self.bn2 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn3 = make_norm(norm, planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.downsample = shortcut
        self.residual = residual
        self.conv_norm_pairs = (("conv1", "bn2"), ("conv2", "bn3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x)) if self.activate_input else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(pre))
        return out


BLOCKS = {("basic", False): BasicBlock, ("bottleneck", False): Bottleneck,
          ("basic", True): PreActBasicBlock, ("bottleneck", True): PreActBottleneck}


def make_stage(block: type[nn.Module], in_channels: int, planes: int, num_units: int, stride: int, *, norm: str,
               shortcut: str, plain: bool, stride_in_1x1: bool, activate_first_input: bool) -> nn.Sequential:
    """``num_units`` units of ``block`` with shortcuts of option ``shortcut`` (none with ``plain``); the first
    unit changes the shape (``stride``, channels). ``activate_first_input=False`` drops the first
    pre-activation unit's BN-ReLU, which the stem's already provides (Identity Mappings, appendix)."""
    preact = block in (PreActBasicBlock, PreActBottleneck)
    units = []
    channels = in_channels
    for unit in range(num_units):
        out_channels = planes * block.expansion
        unit_stride = stride if unit == 0 else 1
        skip = None if plain else make_shortcut(shortcut, channels, out_channels, unit_stride, norm, preact)
        extra = {"activate_input": activate_first_input or unit > 0} if preact else {}
        units.append(block(channels, planes, unit_stride, norm, skip, residual=not plain,
                           stride_in_1x1=stride_in_1x1, **extra))
        channels = out_channels
    return nn.Sequential(*units)


def last_norm(unit: nn.Module) -> nn.Module | None:
    """The norm a post-activation unit's residual branch ends with; None for other units."""
    if isinstance(unit, Bottleneck):
        return unit.bn3
    return unit.bn2 if isinstance(unit, BasicBlock) else None


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He initialization of the convs (normal, std sqrt(2 / (k*k*out_channels))), norms at identity, and
    with ``zero_init_residual`` each post-activation unit's last norm at zero, so that it starts as its
    shortcut. Pre-activation units end with a conv, not a norm: zero_init_residual is refused there
    (it did nothing, where the docs promised branches starting at zero)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if not zero_init_residual:
        return
    if getattr(model, "preact", False):
        raise BackboneError("zero_init_residual=True has no norm to zero in pre-activation units (each residual "
                            "branch ends with a convolution): drop zero_init_residual or preact")
    for module in model.modules():
        norm = last_norm(module)
        if norm is None:
            continue
        if not module.residual:
            # A plain unit has no shortcut: a zero norm would cut the signal of the whole net.
            raise BackboneError("zero_init_residual=True needs residual units: a plain net would start "
                                "with every unit's output at zero; drop zero_init_residual or plain")
        if isinstance(norm, FrozenBatchNorm2d):
            # Its scale is a buffer: a zero there is never trained away, and weights would overwrite it anyway.
            raise BackboneError("zero_init_residual=True needs a trainable norm: with norm='frozen_bn' every "
                                "residual branch would stay at zero for good; pass norm='bn' (or 'syncbn', 'gn')")
        if getattr(norm, "weight", None) is not None:
            norm.weight.data.zero_()


def freeze_stem_and_stages(model: nn.Module, freeze_at: int, num_stages: int) -> None:
    """Stop gradients in the stem (``conv1``, ``bn1``) when freeze_at >= 1 and in stages ``layer1`` ..
    ``layer{freeze_at-1}`` of the model's ``num_stages``. Trainable norms in frozen parts become
    FrozenBatchNorm2d, so that their statistics stay fixed even in train mode."""
    # Checked here too: the builders apply freeze_at after loading weights, not in the constructor.
    check_freeze_at(freeze_at, num_stages)
    if freeze_at >= 1:
        for part in (model.conv1, model.bn1):
            part.requires_grad_(False)
        model.bn1 = FrozenBatchNorm2d.convert(model.bn1)
    for index in range(1, freeze_at):
        layer = getattr(model, f"layer{index}", None)
        if layer is not None:
            check_no_dead_branch(layer, f"layer{index}", freeze_at)
            layer.requires_grad_(False)
            FrozenBatchNorm2d.convert(layer)


def check_no_dead_branch(layer: nn.Module, name: str, freeze_at: int) -> None:
    """A residual branch whose last norm is all zero (zero_init_residual, no weights loaded) would stay
    dead once frozen: the unit would be its shortcut for good."""
    for index, unit in enumerate(layer):
        norm = last_norm(unit)
        scale = getattr(norm, "weight", None)
        if scale is not None and not scale.is_meta and not scale.detach().any():  # meta: no values to read
            raise BackboneError(f"freeze_at={freeze_at} freezes {name}.{index} with its residual branch at zero "
                                f"(zero_init_residual=True, no weights loaded), so it would never train: "
                                f"pass freeze_at=0 or 1, load weights, or drop zero_init_residual")


class StagedResNet(nn.Module):
    """What the ImageNet and the CIFAR families share: a stem, stages of units named ``layer1``..,
    the pre-activation nets' last BN-ReLU, the classifier head, and the forward that returns the
    requested named features, running no stage after the last one needed.

    A subclass builds its stem (``conv1``, ``bn1``, ``act1`` and whatever else), calls
    :meth:`add_stages` and :meth:`add_head`, and names its features in ``stem_features`` (returned by
    :meth:`forward_stem`) and ``stage_names``.
    """

    out_features: list[str]
    stage_names: list[str]

    def add_stages(self, unit: type[nn.Module], channels: int, widths: Sequence[int], units: Sequence[int],
                   first_stride: int, norm: str, shortcut: str, plain: bool, stride_in_1x1: bool) -> int:
        """Stages ``layer1``.. of ``units[i]`` units of width ``widths[i]`` (stride 2 from the second
        stage on), recorded in ``out_channels``/``out_strides``; returns the channels of the last one."""
        stride = first_stride
        for index, (name, width, count) in enumerate(zip(self.stage_names, widths, units)):
            stage = make_stage(unit, channels, width, count, stride=1 if index == 0 else 2, norm=norm,
                               shortcut=shortcut, plain=plain, stride_in_1x1=stride_in_1x1,
                               activate_first_input=index > 0)
            self.add_module(f"layer{index + 1}", stage)
            stride *= 1 if index == 0 else 2
            channels = width * unit.expansion
            self.out_channels[name] = channels
            self.out_strides[name] = stride
        return channels

    def add_head(self, channels: int, num_classes: int | None, norm: str, preact: bool) -> None:
        # Pre-activation nets end with one extra BN-ReLU after the last addition.
        self.post_norm = make_norm(norm, channels) if preact else None
        self.fc = None
        if num_classes:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(channels, num_classes)
            self.out_channels["logits"] = num_classes

    def forward_stem(self, x: torch.Tensor, wanted: set[str], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if "act1" in wanted:
            outputs["act1"] = x
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.out_features)
        outputs: dict[str, torch.Tensor] = {}
        x = self.forward_stem(x, wanted, outputs)
        last = self._last_needed_stage()
        for index, name in enumerate(self.stage_names[: last + 1]):
            x = getattr(self, f"layer{index + 1}")(x)
            if index == self.num_stages - 1 and self.post_norm is not None:
                x = F.relu(self.post_norm(x))
            if name in wanted:
                outputs[name] = x
        if "logits" in wanted:
            outputs["logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
        return outputs

    def _last_needed_stage(self) -> int:
        if "logits" in self.out_features:
            return len(self.stage_names) - 1
        needed = [self.stage_names.index(f) for f in self.out_features if f in self.stage_names]
        return max(needed, default=-1)


class ResNet(StagedResNet):
    """A ResNet that returns a dict of named features.

    Args:
        depth: 18, 34, 50, 101, 152 (or 200).
        num_classes: adds global average pooling and a fully connected layer ("logits").
        out_features: names to return, a subset of "act1", "stem", "res2".."res5", "logits". Stages after
            the last requested one are still built (so that checkpoints load) but never run.
        norm: "frozen_bn" (default: BN fixed at the loaded statistics, for detection; without weights it is
            the identity), "bn", "syncbn" or "gn". ``resnet18()`` .. ``resnet152()`` and ``create()``
            default to "bn" when no weights are given.
        freeze_at: 0 freezes nothing, 1 the stem, k the stem and the first k-1 stages.
        stride_in_1x1, shortcut, plain, preact: the paper's variants (see the module docstring).
        zero_init_residual: start each residual branch's last norm at zero (training from scratch). Needs a
            trainable norm ("bn", "syncbn", "gn"): refused with "frozen_bn", whose zero would never
            train, when ``freeze_at`` >= 2 would freeze such a branch before weights replace it, and with
            ``preact`` (its branches end with a convolution).
        base_width: channels of the stem and the first stage (64 in the paper); smaller values give
            narrow networks for quick CPU experiments. Pretrained weights need 64.
    """

    timm_features = TIMM_FEATURES

    def __init__(
        self,
        depth: int = 50,
        num_classes: int | None = None,
        out_features: Sequence[str] | None = None,
        norm: str = "frozen_bn",
        freeze_at: int = 0,
        stride_in_1x1: bool = False,
        shortcut: str = "B",
        plain: bool = False,
        preact: bool = False,
        zero_init_residual: bool = False,
        in_channels: int = 3,
        base_width: int = 64,
    ):
        super().__init__()
        check_arguments(depth, norm, shortcut, freeze_at)
        if out_features is None:
            out_features = ["logits"] if num_classes else ["res5"]
        out_features = list(out_features)
        unknown = [name for name in out_features if name not in FEATURE_NAMES]
        if unknown:
            raise BackboneError(f"unknown out_features {unknown}: choose from {', '.join(FEATURE_NAMES)}")
        if "logits" in out_features and not num_classes:
            raise BackboneError("out_features 'logits' needs num_classes (the classifier head)")

        kind, units = ARCHITECTURES[depth]
        self.depth = depth
        self.preact = preact
        # What tells two networks of the same tensors apart, for the weights loaders to check.
        self.plain, self.shortcut, self.base_width = plain, shortcut, base_width
        self.stride_in_1x1 = stride_in_1x1 if kind == "bottleneck" else None
        self.norm = norm
        self.out_features = out_features
        block = BLOCKS[(kind, preact)]

        # The stem's BN-ReLU also serves as the first pre-activation (Identity Mappings, appendix).
        if base_width % 8 or base_width <= 0:
            raise BackboneError(f"base_width must be a positive multiple of 8, got {base_width}")
        self.conv1 = nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, base_width)
        self.act1 = nn.ReLU(inplace=True)  # a module (timm's name), so that feature_info can name it
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = {"act1": base_width, "stem": base_width}
        self.out_strides = {"act1": 2, "stem": 4}

        self.stage_names = list(STAGE_NAMES)
        self.num_stages = len(STAGE_NAMES)
        widths = [base_width * 2**index for index in range(len(STAGE_NAMES))]
        channels = self.add_stages(block, base_width, widths, units, first_stride=4, norm=norm, shortcut=shortcut,
                                   plain=plain, stride_in_1x1=stride_in_1x1)
        self.add_head(channels, num_classes, norm, preact)
        init_weights(self, zero_init_residual)
        self.freeze(freeze_at)

    def stage(self, name: str) -> nn.Module | None:
        """The module computing feature ``name`` ("res2".."res5"), None once detached."""
        return getattr(self, f"layer{STAGE_NAMES.index(name) + 1}", None)

    def detach_stage(self, name: str) -> nn.Module:
        """Remove stage ``name`` and everything after it from this trunk and return that stage.

        Used by the C4 detector, whose RoI head runs res5 on each region: the stage then lives
        in the head and is no longer part of the trunk's state dict. A pre-activation net's final
        BN-ReLU, which follows its last stage, leaves with it (the stage is returned as
        ``Sequential(stage, post_norm, ReLU)``), so that what is returned computes the whole net's res5.
        """
        index = STAGE_NAMES.index(name)
        module = self.stage(name)
        if index != len(self.stage_names) - 1 or module is None:
            raise BackboneError(f"only the last stage can be detached, not {name}")
        delattr(self, f"layer{index + 1}")
        if self.post_norm is not None:
            module = nn.Sequential(module, self.post_norm, nn.ReLU())
            self.post_norm = None
        self.stage_names = self.stage_names[:index]
        self.out_features = [f for f in self.out_features if f in ("act1", "stem", *self.stage_names)]
        self.fc = None
        return module

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients in the stem (freeze_at >= 1) and the first freeze_at-1 stages
        (:func:`freeze_stem_and_stages`)."""
        freeze_stem_and_stages(self, freeze_at, num_stages=len(STAGE_NAMES))

    # -- forward ---------------------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor, wanted: set[str], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = super().forward_stem(x, wanted, outputs)
        x = self.maxpool(x)  # not in place: the act1 map stays as returned
        if "stem" in wanted:
            outputs["stem"] = x
        return x


def check_arguments(depth: int, norm: str, shortcut: str, freeze_at: int) -> None:
    if depth not in ARCHITECTURES:
        raise BackboneError(f"unknown ResNet depth {depth}: choose one of {', '.join(map(str, ARCHITECTURES))}")
    check_options(norm, shortcut)
    check_freeze_at(freeze_at, num_stages=len(STAGE_NAMES))


def check_options(norm: str, shortcut: str) -> None:
    """The options both ResNet families share."""
    if norm not in NORMS:
        raise BackboneError(f"unknown norm '{norm}': choose one of {', '.join(NORMS)}")
    if shortcut not in SHORTCUTS:
        raise BackboneError(f"unknown shortcut option '{shortcut}': choose A, B or C")


def check_freeze_at(freeze_at: int, num_stages: int) -> None:
    """``freeze_at`` counts the stem and then the stages."""
    if not 0 <= freeze_at <= num_stages + 1:
        raise BackboneError(f"freeze_at must be between 0 and {num_stages + 1}, got {freeze_at}")


def timm_out_indices(out_indices: int | Sequence[int], names: Sequence[str] = TIMM_FEATURES,
                     strides: Sequence[int] = (2, 4, 8, 16, 32)) -> tuple[int, ...]:
    """timm's meaning of ``out_indices`` over a network's maps ``names`` (TIMM_FEATURES for the ImageNet
    family, at ``strides``): an int n is the last n maps, negative indices count from the end. Indices
    must increase: timm returns the maps in network order whatever the order given (while its
    feature_info follows the order given), so another order is refused rather than guessed."""
    count = len(names)
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= count:
            raise BackboneError(f"out_indices={out_indices} asks for the last {out_indices} feature maps: "
                                f"give 1..{count}, or a tuple of indices")
        return tuple(range(count - out_indices, count))
    indices = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
            raise BackboneError(f"out_indices entry {index!r} is not a feature index: give integers in 0..{count - 1} "
                                f"(0 = {names[0]} at stride {strides[0]}, 1..{count - 1} = {names[1]}..{names[-1]} "
                                f"at strides {strides[1]}..{strides[-1]}, as in timm)")
        indices.append(index % count)
    if not indices or any(a >= b for a, b in zip(indices, indices[1:])):
        fix = f"give {tuple(sorted(set(indices)))}" if indices else "give at least one index"
        raise BackboneError(f"out_indices {tuple(out_indices)} must be increasing (the maps come in network "
                            f"order, as in timm): {fix}")
    return tuple(indices)


class FeatureInfo:
    """timm's ``feature_info`` of a features_only network: one dict per map the network can give
    (``num_chs``, ``reduction``, ``module``, ``index``) and the indices it returns (``out_indices``).

    ``channels()``, ``reduction()`` and ``module_name()`` list the returned maps, or the maps of
    ``idx`` (an index or a list of them); ``info[i]`` / ``feature_info[i]`` is any map's dict."""

    def __init__(self, info: list[dict], out_indices: Sequence[int]):
        self.info = info
        self.out_indices = tuple(out_indices)

    def from_other(self, out_indices: Sequence[int]) -> FeatureInfo:
        return FeatureInfo([dict(entry) for entry in self.info], out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None):
        def select(entry: dict) -> dict:
            return entry if keys is None else {key: entry[key] for key in keys}

        if idx is None:
            return [select(self.info[i]) for i in self.out_indices]
        if isinstance(idx, int):
            return select(self.info[idx])
        return [select(self.info[i]) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None):
        return self.get("module", idx)

    def __getitem__(self, index: int) -> dict:
        return self.info[index]

    def __len__(self) -> int:
        return len(self.info)


class FeatureListNet(nn.Module):
    """timm-style ``features_only`` network: ``model`` returning the maps of ``out_indices`` (timm's
    meaning, :func:`timm_out_indices`) as a list in network order, described by ``feature_info``.
    ``model`` is a :class:`ResNet` or a :class:`backbones.cifar.CifarResNet`: its ``timm_features`` name
    its maps, ``act1`` then one per stage ``layer1``, ``layer2``, ...; module names in ``feature_info`` are
    those of this network (``model.act1``, ``model.layer1``, ...). ``out_indices=None``: every map."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None):
        super().__init__()
        names = model.timm_features
        if out_indices is None:
            out_indices = tuple(range(len(names)))
        indices = timm_out_indices(out_indices, names, [model.out_strides[name] for name in names])
        self.names = [names[i] for i in indices]
        missing = [name for name in self.names if name != "act1" and name not in model.stage_names]
        if missing:
            raise BackboneError(f"out_indices {indices} ask for {missing}, which this model no longer has "
                                "(detached for a C4 head)")
        model.out_features = list(self.names)
        self.model = model
        modules = ["model.act1"] + [f"model.layer{i}" for i in range(1, len(names))]
        info = [{"num_chs": model.out_channels[name], "reduction": model.out_strides[name], "module": module,
                 "index": index} for index, (name, module) in enumerate(zip(names, modules))]
        # out_indices kept as timm keeps them: negative ones as given, an int n as (-n, ..., -1).
        given = tuple(range(-out_indices, 0)) if isinstance(out_indices, int) else tuple(out_indices)
        self.feature_info = FeatureInfo(info, given)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        return [features[name] for name in self.names]
