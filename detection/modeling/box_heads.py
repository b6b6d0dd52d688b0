"""Per-region heads: res5 for C4 (the paper's design), two fc layers for FPN, and the predictor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Res5Head(nn.Module):
    """conv5_x run on each pooled region, then global average pooling (paper, Appendix A)."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.res5(pooled).mean(dim=(2, 3))


def reorder_by_position_(weight: torch.Tensor, channels: int, resolution: int, rows_per_block: int = 64) -> None:
    """Reorder the columns of an (out, C*P*P) weight from (C, P, P) to (P, P, C) order, in place,
    a block of rows at a time (a whole copy of fc6's weight would add 50 MB to peak memory)."""
    by_channel = weight.view(weight.shape[0], channels, resolution, resolution)
    for start in range(0, weight.shape[0], rows_per_block):
        block = by_channel[start:start + rows_per_block].permute(0, 2, 3, 1).contiguous()
        weight[start:start + rows_per_block].copy_(block.view(block.shape[0], -1))


class PositionMajorLinear(nn.Module):
    """fc6 of an FCHead for channels_last RoI features: the same layer with its input weights
    reordered once from (C, P, P) to (P, P, C), so that (N, C, P, P) features stored channels_last
    (what the CPU RoIAlign returns) flatten without a copy: 50 MB per image for 1000 RoIs of 256x7x7.

    Its weight is saved as ``weight_by_position``, so that its state dict is never mistaken for an
    nn.Linear's (loading one into the other fails with the key named)."""

    def __init__(self, linear: nn.Linear, channels: int, resolution: int):
        """Takes over ``linear``'s parameters, its weight reordered in place."""
        super().__init__()
        reorder_by_position_(linear.weight.detach(), channels, resolution)
        self.weight_by_position = linear.weight
        self.bias = linear.bias

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.linear(pooled.permute(0, 2, 3, 1).flatten(1), self.weight_by_position, self.bias)


class FCHead(nn.Module):
    """Flatten, then fully connected layers with ReLU (``fc6``, ``fc7`` as in torchvision's TwoMLPHead).
    The inference fast path replaces fc6 by a PositionMajorLinear (:meth:`read_channels_last`)."""

    def __init__(self, in_channels: int, resolution: int, num_fc: int, fc_dim: int):
        super().__init__()
        self.num_fc = num_fc
        dim = in_channels * resolution * resolution
        for index in range(num_fc):
            self.add_module(f"fc{index + 6}", nn.Linear(dim, fc_dim))
            dim = fc_dim
        self.out_channels = dim
        self.in_channels, self.resolution = in_channels, resolution

    def read_channels_last(self) -> None:
        """Swap fc6 for its PositionMajorLinear (in place, once; inference only)."""
        if self.num_fc and isinstance(self.fc6, nn.Linear):
            self.fc6 = PositionMajorLinear(self.fc6, self.in_channels, self.resolution)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        reads_pooled = self.num_fc and isinstance(self.fc6, PositionMajorLinear)
        x = pooled if reads_pooled else pooled.flatten(1)
        for index in range(self.num_fc):
            x = F.relu(getattr(self, f"fc{index + 6}")(x))
        return x


class BoxPredictor(nn.Module):
    """Sibling layers: a (K+1)-way classifier (index 0 = background) and class-specific box deltas."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
