"""Resizing and flipping images with their boxes.

Training uses albumentations (bbox-aware) with a per-sample seed, so that an augmentation depends
only on (run seed, epoch, image) and not on which worker process draws it: runs resume exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# albumentations asks the network for a newer version on import: a delay and a warning on every
# offline cluster node. Users who want the check can set the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2
import numpy as np


def shortest_edge_scale(height: int, width: int, short: float, max_size: float) -> float:
    """Scale making the shorter side ``short`` unless the longer side would exceed ``max_size``."""
    return min(short / min(height, width), max_size / max(height, width))


class ResizeShortestEdge(A.SmallestMaxSize):
    """Shorter side drawn from ``short_sizes``, longer side capped at ``max_size``."""

    def __init__(self, short_sizes: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(max_size=list(short_sizes), p=p)
        self.cap = max_size

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.max_size)
        return {"scale": shortest_edge_scale(height, width, short, self.cap)}


class TrainTransform:
    """Random shortest-edge resize and horizontal flip of an RGB image and its xyxy boxes."""

    def __init__(self, min_sizes: Sequence[int], max_size: int, flip_prob: float = 0.5):
        self.pipeline = A.Compose(
            [ResizeShortestEdge(min_sizes, max_size), A.HorizontalFlip(p=flip_prob)],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_ids"], min_visibility=0.0,
                                     clip=True),
        )

    def __call__(self, image: np.ndarray, boxes: np.ndarray, seed: int):
        """Returns the new image and boxes, and the ids of the boxes that survived (all, normally)."""
        self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=image, bboxes=boxes.reshape(-1, 4), box_ids=np.arange(len(boxes)))
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return out["image"], new_boxes, np.asarray(out["box_ids"], dtype=np.int64)


class EvalTransform:
    """Deterministic shortest-edge resize (the test scale)."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        scale = shortest_edge_scale(height, width, self.min_size, self.max_size)
        new_size = (int(round(width * scale)), int(round(height * scale)))
        if new_size == (width, height):
            return image
        return cv2.resize(image, new_size, interpolation=cv2.INTER_LINEAR)
