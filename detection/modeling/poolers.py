"""RoI feature extraction: one feature map (C4) or a pyramid (FPN), all from torchvision.ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool


class SingleLevelPooler(nn.Module):
    """RoIAlign (or RoIPool) of every box on one feature map of a known stride."""

    def __init__(self, feature: str, output_size: int, stride: int, sampling_ratio: int = 0,
                 kind: str = "roi_align"):
        super().__init__()
        self.feature = feature
        self.output_size = (output_size, output_size)
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = sampling_ratio
        self.kind = kind

    def forward(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        feature = features[self.feature]
        boxes = [b.to(feature.dtype) for b in boxes]
        if self.kind == "roi_pool":
            return roi_pool(feature, boxes, self.output_size, self.spatial_scale)
        # aligned=True samples at pixel centres (no half-pixel shift), the more exact RoIAlign.
        return roi_align(feature, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, aligned=True)


class PyramidPooler(nn.Module):
    """Each box pooled from the FPN level that matches its size (FPN paper, eq. 1), via torchvision."""

    def __init__(self, features: Sequence[str], output_size: int, sampling_ratio: int = 2):
        super().__init__()
        self.pooler = MultiScaleRoIAlign(list(features), output_size, sampling_ratio)

    def forward(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        return self.pooler(features, list(boxes), list(image_sizes))
