"""The CIFAR ResNets: "Deep Residual Learning for Image Recognition", section 4.2, and the deeper
pre-activation nets of "Identity Mappings in Deep Residual Networks".

A 3x3 conv with 16 filters (norm, ReLU), three stages of units on 32x32, 16x16 and 8x8 maps with 16,
32 and 64 filters (a stride-2 first conv in stages 2 and 3), global average pooling and a K-way fc.
The units are those of the ImageNet family (:mod:`backbones.resnet`), and so are the variants:

* basic units (two 3x3 convs): depth 6n+2 (20, 32, 44, 56, 110, 1202: n = 3, 5, 7, 9, 18, 200);
  bottleneck units (1x1, 3x3, 1x1; 16, 32, 64 filters, 4x as many out): depth 9n+2. Depth 164 and
  1001 are both, and mean the bottleneck nets of Identity Mappings; ``block=`` chooses otherwise.
* ``shortcut``: "A" (identity, stride-2 subsampling and zero-filled extra channels: no parameters,
  so a ResNet has the parameters of its plain net) is the paper's choice for the basic nets and the
  default for them; "B" (1x1 projections where the shape changes) the default for bottleneck nets,
  as in the reference code of Identity Mappings (github.com/KaimingHe/resnet-1k-layers); "C".
* ``plain=True``: the same stack without shortcuts (the plain nets of Fig. 6).
* ``preact=True``: full pre-activation units, one extra BN-ReLU after the last unit.
* ``stride_in_1x1`` (bottleneck units only): the stride-2 on the first 1x1 conv, as in that
  reference code (default), or on the 3x3.

Parameter names follow the ImageNet family (``conv1``, ``bn1``, ``layer1`` .. ``layer3``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .errors import BackboneError
from .norm import make_norm
from .resnet import (
    BLOCKS,
    StagedResNet,
    check_freeze_at,
    check_options,
    conv3x3,
    freeze_stem_and_stages,
    init_weights,
)

CIFAR_STAGES = ("stage1", "stage2", "stage3")
# "act1" is conv1 after its norm and ReLU (stride 1: there is no max pool); the stages follow at strides 1, 2, 4.
CIFAR_FEATURES = ("act1",) + CIFAR_STAGES + ("logits",)
# Depths of both forms (9n+2 and 6n+2) that name the bottleneck nets of Identity Mappings.
BOTTLENECK_DEPTHS = (164, 1001)
CIFAR_DEPTHS_TEXT = "6n+2 with basic units (20, 32, 44, 56, 110, 1202) or 9n+2 with bottleneck units (164, 1001)"


def cifar_architecture(depth: int, block: str | None = None) -> tuple[str, int]:
    """The unit kind ("basic" or "bottleneck") and the units per stage of a CIFAR ResNet of ``depth``."""
    if block not in (None, "basic", "bottleneck"):
        raise BackboneError(f"unknown CIFAR block '{block}': choose basic or bottleneck")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise BackboneError(f"CIFAR ResNet depth must be an integer, got {depth!r}")
    if block is None:
        basic_depth = (depth - 2) % 6 == 0 and depth not in BOTTLENECK_DEPTHS
        block = "basic" if basic_depth else "bottleneck"
    layers_per_unit = 2 if block == "basic" else 3
    if depth < 2 + 3 * layers_per_unit or (depth - 2) % (3 * layers_per_unit):
        raise BackboneError(f"no CIFAR ResNet of depth {depth} with {block} units: the depth is {CIFAR_DEPTHS_TEXT}")
    return block, (depth - 2) // (3 * layers_per_unit)


class CifarResNet(StagedResNet):
    """A CIFAR ResNet that returns a dict of named features, as :class:`backbones.ResNet` does.

    Args:
        depth: 6n+2 (basic units) or 9n+2 (bottleneck units), see the module docstring.
        num_classes: adds global average pooling and a fully connected layer ("logits").
        out_features: names to return, a subset of "act1", "stage1".."stage3" (strides 1, 2, 4),
            "logits". Stages after the last requested one are built but never run.
        norm: "bn" (default: these nets train from scratch), "frozen_bn", "syncbn" or "gn".
        freeze_at: 0 freezes nothing, 1 the stem, k the stem and the first k-1 stages.
        shortcut: "A", "B" or "C"; None: "A" for basic units, "B" for bottleneck units.
        plain, preact, stride_in_1x1: the variants of the module docstring.
        block: "basic" or "bottleneck"; None: from the depth.
        zero_init_residual: start each residual branch's last norm at zero (post-activation units). Needs a
            trainable norm: refused with "frozen_bn" and with ``preact``, as for :class:`backbones.ResNet`.
        base_width: filters of the stem and the first stage (16 in the paper); 32 and 64 follow.
    """

    timm_features = ("act1",) + CIFAR_STAGES

    def __init__(
        self,
        depth: int = 20,
        num_classes: int | None = None,
        out_features: Sequence[str] | None = None,
        norm: str = "bn",
        freeze_at: int = 0,
        shortcut: str | None = None,
        plain: bool = False,
        preact: bool = False,
        block: str | None = None,
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        in_channels: int = 3,
        base_width: int = 16,
    ):
        super().__init__()
        kind, units = cifar_architecture(depth, block)
        shortcut = shortcut or ("A" if kind == "basic" else "B")
        check_options(norm, shortcut)
        check_freeze_at(freeze_at, num_stages=len(CIFAR_STAGES))
        if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width <= 0:
            raise BackboneError(f"base_width must be a positive integer, got {base_width!r}")
        self.out_features = check_out_features(out_features, num_classes)
        self.depth, self.block, self.shortcut = depth, kind, shortcut
        self.plain, self.preact, self.norm = plain, preact, norm
        self.base_width = base_width
        self.stride_in_1x1 = stride_in_1x1 if kind == "bottleneck" else None
        unit = BLOCKS[(kind, preact)]

        # The stem's BN-ReLU also serves as the first pre-activation (Identity Mappings, appendix).
        self.conv1 = conv3x3(in_channels, base_width)
        self.bn1 = make_norm(norm, base_width)
        self.act1 = nn.ReLU(inplace=True)
        self.out_channels = {"act1": base_width}
        self.out_strides = {"act1": 1}
        self.stage_names = list(CIFAR_STAGES)
        self.num_stages = len(CIFAR_STAGES)
        widths = [base_width * 2**index for index in range(len(CIFAR_STAGES))]
        channels = self.add_stages(unit, base_width, widths, [units] * len(CIFAR_STAGES), first_stride=1,
                                   norm=norm, shortcut=shortcut, plain=plain, stride_in_1x1=stride_in_1x1)
        self.add_head(channels, num_classes, norm, preact)
        init_weights(self, zero_init_residual)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients in the stem (freeze_at >= 1) and the first freeze_at-1 stages."""
        freeze_stem_and_stages(self, freeze_at, num_stages=len(CIFAR_STAGES))

    def stage(self, name: str) -> nn.Module:
        """The module computing feature ``name`` ("stage1".."stage3")."""
        return getattr(self, f"layer{CIFAR_STAGES.index(name) + 1}")

    def response_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules whose outputs are the responses of the 3x3 layers (paper, Fig. 7), in layer order,
        as (qualified name, module): hook them with ``register_forward_hook``.

        Post-activation nets (the paper's plain and residual nets): the norm after each 3x3 conv, i.e.
        the response after BN and before the ReLU or the addition. The stem conv counts, the fc does
        not: 6n+1 layers for depth 6n+2, 19 for depth 20, as the 3x3 layers of Fig. 7 (bottleneck
        units contribute their one 3x3 conv). Pre-activation units put no norm between a conv and the
        addition, so there each 3x3 conv's own output is the response (the stem's after its norm, as in
        the post-activation nets). In a post-activation net folded by :func:`backbones.fold_frozen_bn`,
        the norms become ``nn.Identity`` after convs that compute both: the hooks see the same values.
        """
        names = ["bn1"]
        for stage_index in range(len(CIFAR_STAGES)):
            for unit_index, unit in enumerate(getattr(self, f"layer{stage_index + 1}")):
                prefix = f"layer{stage_index + 1}.{unit_index}."
                if self.preact:
                    names += [prefix + name for name, child in unit.named_children() if is_3x3_conv(child)]
                else:
                    names += [prefix + norm for conv, norm in unit.conv_norm_pairs
                              if is_3x3_conv(getattr(unit, conv))]
        return [(name, self.get_submodule(name)) for name in names]


def is_3x3_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)


def check_out_features(out_features: Sequence[str] | None, num_classes: int | None) -> list[str]:
    if out_features is None:
        return ["logits"] if num_classes else [CIFAR_STAGES[-1]]
    out_features = list(out_features)
    unknown = [name for name in out_features if name not in CIFAR_FEATURES]
    if unknown:
        raise BackboneError(f"unknown out_features {unknown}: choose from {', '.join(CIFAR_FEATURES)}")
    if "logits" in out_features and not num_classes:
        raise BackboneError("out_features 'logits' needs num_classes (the classifier head)")
    return out_features
