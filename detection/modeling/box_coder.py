"""Box regression targets: the (tx, ty, tw, th) parameterisation of Faster R-CNN (eq. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Deltas larger than this (in log space) would overflow exp(); the cap allows 1000/16 = 62x growth.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes relative to reference boxes and decodes them back.

    ``weights`` divide the targets (the R-CNN heads use (10, 10, 5, 5), i.e. std 0.1/0.2).
    Boxes are (x1, y1, x2, y2) with width x2 - x1.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_x = reference[:, 0] + 0.5 * ref_w
        ref_y = reference[:, 1] + 0.5 * ref_h
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        x = boxes[:, 0] + 0.5 * w
        y = boxes[:, 1] + 0.5 * h
        return torch.stack(
            (wx * (x - ref_x) / ref_w, wy * (y - ref_y) / ref_h, ww * torch.log(w / ref_w), wh * torch.log(h / ref_h)),
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``deltas`` (N, 4k) for ``reference`` (N, 4) -> boxes (N, 4k), in float32 at least: half-precision
        deltas (a head under autocast) are not decoded in their dtype, where bfloat16 spaces 1000-pixel
        coordinates 4 to 8 pixels apart and the anchors themselves would round."""
        dtype = torch.promote_types(deltas.dtype, torch.float32)
        deltas, reference = deltas.to(dtype), reference.to(dtype)
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_x = reference[:, 0] + 0.5 * ref_w
        ref_y = reference[:, 1] + 0.5 * ref_h
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        x = dx * ref_w[:, None] + ref_x[:, None]
        y = dy * ref_h[:, None] + ref_y[:, None]
        w = torch.exp(dw) * ref_w[:, None]
        h = torch.exp(dh) * ref_h[:, None]
        boxes = torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=2)
        return boxes.flatten(1)
