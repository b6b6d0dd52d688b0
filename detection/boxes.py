"""Box geometry that the data pipelines and the models share (data code may not import model code)."""

from __future__ import annotations

import torch


def flip_boxes(boxes, width: float):
    """Boxes (..., 4) in continuous x1, y1, x2, y2 of an image ``width`` wide, mirrored left to right;
    a tensor or a numpy array, as given."""
    flipped = boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    flipped[..., 0] = width - boxes[..., 2]
    flipped[..., 2] = width - boxes[..., 0]
    return flipped
