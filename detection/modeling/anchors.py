"""Translation-invariant anchors: a few shapes repeated at every position of each feature map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .traceable import exporting


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0): ratio-major, size-minor; ratio = height / width; rounded to pixels."""
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    heights = (h_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


def shifted_anchors(cell: torch.Tensor, feature_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """(h*w*A, 4) anchors: the (A, 4) ``cell`` placed at (stride_x * column, stride_y * row) of each cell
    of an (h, w) map, position-major (row, column) then anchor, as the heads lay out their outputs."""
    height, width = feature_size
    shifts_x = torch.arange(width, dtype=torch.float32, device=cell.device) * stride[1]
    shifts_y = torch.arange(height, dtype=torch.float32, device=cell.device) * stride[0]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for each feature level, ordered position-major (row, column) then anchor.

    Args:
        sizes: per level, the anchor sizes (square root of the area) in input pixels.
        aspect_ratios: height / width ratios, shared by all levels.
        strides: per level, the network's stride: cell (i, j) of a map holds the features around
            (stride * j, stride * i) of the padded image, whatever its size. None takes torchvision's
            rule, padded size // map size, which is that stride only where the padded size is a
            multiple of it: for P6 of an 800-pixel side (25 cells at P5, 13 at P6) it gives 61, and
            the anchors drift off the cells that score them, 36 pixels at the far edge. Converted
            torchvision detectors need it to give torchvision's detections.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float],
                 strides: Sequence[int] | None = None):
        super().__init__()
        if strides is not None and len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} strides for {len(sizes)} levels of anchor sizes")
        self.cell_anchors = [cell_anchors(level_sizes, aspect_ratios) for level_sizes in sizes]
        self.strides = None if strides is None else [int(s) for s in strides]
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        counts = {len(c) for c in self.cell_anchors}
        if len(counts) != 1:
            raise ValueError("all levels must have the same number of anchors per location")
        return counts.pop()

    def grid_anchors(self, level: int, feature_size: tuple[int, int], stride: tuple[int, int],
                     device: torch.device) -> torch.Tensor:
        """Anchors of one level, cached by size. While tracing or exporting, sizes and strides are
        0-dim tensors or symbolic ints and the grid is computed in the graph, so that it follows the
        input's size."""
        if torch.jit.is_tracing() or exporting():
            return self.compute_grid_anchors(level, feature_size, stride, device)
        key = (level, feature_size, stride, str(device))
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) > 64:
                self._cache.clear()
            cached = self._cache[key] = self.compute_grid_anchors(level, feature_size, stride, device)
        return cached

    def compute_grid_anchors(self, level: int, feature_size: tuple[int, int], stride: tuple[int, int],
                             device: torch.device) -> torch.Tensor:
        return shifted_anchors(self.cell_anchors[level].to(device), feature_size, stride)

    def forward(self, padded_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]],
                device: torch.device) -> list[torch.Tensor]:
        """Anchors of every level for a padded batch of (height, width) ``padded_size`` (one set serves
        all images)."""
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(f"{len(feature_sizes)} feature maps but anchors for {len(self.cell_anchors)} levels")
        anchors = []
        for level, size in enumerate(feature_sizes):
            if self.strides is not None:
                stride = (self.strides[level], self.strides[level])
            else:
                stride = (padded_size[0] // size[0], padded_size[1] // size[1])
            anchors.append(self.grid_anchors(level, tuple(size), stride, device))
        return anchors
