"""RoI feature extraction: one feature map (C4) or a pyramid (FPN).

RoIAlign runs as a multi-threaded weighted gather on CPUs (resnet_ops/roi_align.py, the
same numbers as torchvision's op) and as torchvision's op elsewhere; RoIPool is torchvision's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_pool

from resnet_ops.roi_align import multiscale_roi_align, roi_align


class SingleLevelPooler(nn.Module):
    """RoIAlign (or RoIPool) of every box on one feature map of a known stride."""

    def __init__(self, feature: str, output_size: int, stride: int, sampling_ratio: int, kind: str, impl: str):
        """``sampling_ratio`` 0: adaptive; ``kind``: "roi_align" or "roi_pool"; ``impl``: the RoIAlign
        implementation ("auto", "gather" or "torchvision")."""
        super().__init__()
        self.feature = feature
        self.output_size = (output_size, output_size)
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = sampling_ratio
        self.kind = kind
        self.impl = impl

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        feature = features[self.feature]
        if self.kind == "roi_pool":
            return roi_pool(feature, [b.to(feature.dtype) for b in boxes], self.output_size, self.spatial_scale)
        # aligned=True samples at pixel centres (no half-pixel shift), the more exact RoIAlign.
        return roi_align(feature, boxes, self.output_size[0], self.spatial_scale, self.sampling_ratio,
                         aligned=True, impl=self.impl)


class PyramidPooler(nn.Module):
    """Each box pooled from the FPN level that matches its size (FPN paper, eq. 1), with
    torchvision MultiScaleRoIAlign's level rule and sampling (legacy, not pixel-aligned)."""

    def __init__(self, features: Sequence[str], strides: Sequence[int], output_size: int, sampling_ratio: int,
                 impl: str):
        super().__init__()
        self.features = list(features)
        self.strides = list(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.impl = impl

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        return multiscale_roi_align([features[name] for name in self.features], boxes, self.strides,
                                    self.output_size, self.sampling_ratio, self.impl)
