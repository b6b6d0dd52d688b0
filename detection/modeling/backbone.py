"""Feature extractors for the two detector designs: the C4 trunk and ResNet + FPN."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from backbones import ResNet


class ResNetFPN(nn.Module):
    """ResNet stages ``in_features`` through torchvision's FeaturePyramidNetwork, plus P6 by max-pooling P5.

    Outputs are named after their stride: "p2" (4) .. "p5" (32) and "p6" (64).
    """

    def __init__(self, body: ResNet, in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
                 out_channels: int = 256):
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
        pyramid = self.fpn(OrderedDict((name, features[name]) for name in self.in_features))
        return dict(zip(self.out_features, pyramid.values()))
