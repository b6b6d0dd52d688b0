"""Resizing and flipping images with their boxes.

Training uses albumentations (bbox-aware) with a per-sample seed, so that an augmentation depends
only on (run seed, epoch, image) and not on which worker process draws it: runs resume exactly.
The test-time resize, :func:`resize_shortest_edge`, is the one function that the data loader, the
test-time augmentations (detection/modeling/test_time.py) and the exported detector resize with.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F


def shortest_edge_scale(height: int, width: int, short: float, max_size: float) -> float:
    """Scale making the shorter side ``short`` unless the longer side would exceed ``max_size``."""
    return min(short / min(height, width), max_size / max(height, width))


def shortest_edge_size(height, width, short: float, max_size: float):
    """(new height, new width) of the test-time resize: each side times :func:`shortest_edge_scale`,
    rounded half to even.

    Python ints give ints. Sizes that a trace records as 0-dim tensors give 0-dim int64 tensors,
    computed in float64 like the Python floats, so that an exported detector resizes every image
    to the size the PyTorch one does. The symbolic ints of torch.export are computed the same way
    in the graph and give symbolic ints (the exporter's own arithmetic on them is float32).
    """
    symbolic = isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt)
    if symbolic or isinstance(height, torch.Tensor) or isinstance(width, torch.Tensor):
        size = torch.stack([_float64_size(height), _float64_size(width)])
        # Divisions of tensors (a number divided by a tensor is traced as a reciprocal and a product).
        scale = (size.new_tensor([short, max_size]) / torch.stack([size.min(), size.max()])).min()
        new_height, new_width = (size * scale).round().long()
        return (_graph_int(new_height), _graph_int(new_width)) if symbolic else (new_height, new_width)
    scale = shortest_edge_scale(height, width, short, max_size)
    return int(round(height * scale)), int(round(width * scale))


def _float64_size(size) -> torch.Tensor:
    """A traced 0-dim tensor or a symbolic int of torch.export as a float64 0-dim tensor
    (``torch.as_tensor`` would fix a symbolic int to the example's value)."""
    return size.double() if isinstance(size, torch.Tensor) else torch.scalar_tensor(size, dtype=torch.float64)


def _graph_int(value: torch.Tensor):
    """A 0-dim int64 tensor of the graph read as a size under torch.export: a symbolic int that it
    knows to be positive."""
    size = value.item()
    torch._check(size >= 1)
    return size


def resize_shortest_edge(image, short: float, max_size: float):
    """The test-time resize of the data loader, of the test-time augmentations and of the exported
    detector: ``image``, an (H, W, C) numpy array (the loader's) or a (C, H, W) tensor, resized to
    :func:`shortest_edge_size` by :func:`resize_bilinear`. An image already at that size is returned
    as it is (while tracing or exporting, sizes are tensors or symbolic ints and the graph always
    resizes, to the same pixels)."""
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
    else:
        height, width = image.shape[-2], image.shape[-1]
    new_height, new_width = shortest_edge_size(height, width, short, max_size)
    in_graph = torch.jit.is_tracing() or isinstance(new_height, torch.SymInt)
    if not in_graph and (new_height, new_width) == (height, width):
        return image
    return resize_bilinear(image, new_height, new_width)


def resize_bilinear(image, height, width):
    """Bilinear interpolation at pixel centres without antialiasing, which OpenCV's INTER_LINEAR and
    ``F.interpolate(mode="bilinear", align_corners=False)`` both compute.

    uint8 images, numpy (H, W, C) or tensor (C, H, W), go through OpenCV and stay uint8 (rounded
    from its fixed-point weights): the pixels the network has always been given by the loader.
    Float tensors are interpolated in float on their device, as is every tensor while tracing (the
    graph follows the input's size; OpenCV is outside it).
    """
    if isinstance(image, np.ndarray):
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.dtype == torch.uint8 and not torch.jit.is_tracing():
        planes_last = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
        resized = cv2.resize(planes_last, (width, height), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(resized.reshape(height, width, -1)).permute(2, 0, 1)
    source = image if image.is_floating_point() else image.float()
    return F.interpolate(source[None], size=(height, width), mode="bilinear", align_corners=False)[0]


class ResizeShortestEdge(A.SmallestMaxSize):
    """Shorter side drawn from ``short_sizes``, longer side capped at ``max_size``."""

    def __init__(self, short_sizes: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(max_size=list(short_sizes), p=p)
        self.cap = max_size

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.max_size)
        return {"scale": shortest_edge_scale(height, width, short, self.cap)}


def box_params() -> A.BboxParams:
    """Boxes as pixel xyxy, clipped to the image, each with its index in ``box_ids``: a box that a crop
    leaves no area of is dropped with its index, and the caller drops its label with it."""
    return A.BboxParams(format="pascal_voc", label_fields=["box_ids"], min_visibility=0.0, clip=True)


def paper_transforms(min_sizes: Sequence[int], max_size: int, flip_prob: float) -> list[A.BasicTransform]:
    """The paper's training augmentation: a random shortest-edge resize and a horizontal flip."""
    return [ResizeShortestEdge(min_sizes, max_size), A.HorizontalFlip(p=flip_prob)]


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """One random stream for the whole pipeline, drawn by each transform in turn. Compose's
    set_random_seed would give every transform a stream of its own from the same seed: their first
    draws would be equal, and the resize would decide the flip (768 and 800 never flipped among six
    sizes), the flip the crop, the jitter, the scale."""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


class TrainTransform:
    """Random shortest-edge resize and horizontal flip of an RGB image and its xyxy boxes, then
    ``augmentations`` (albumentations transforms: detection/data/augment.py builds those of a config).

    One pipeline, seeded per sample, draws all of them: the resize and flip first, so that they draw
    what they draw without augmentations.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, flip_prob: float = 0.5,
                 augmentations: Sequence[A.BasicTransform] = ()):
        paper = paper_transforms(min_sizes, max_size, flip_prob)
        self.pipeline = A.Compose([*paper, *augmentations], bbox_params=box_params())
        # The resize and flip alone, for a sample that the augmentations fail on.
        self.without_augmentations = (A.Compose(paper_transforms(min_sizes, max_size, flip_prob),
                                                bbox_params=box_params()) if augmentations else None)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, seed: int):
        """Returns the new image and boxes, and the ids of the boxes that survived (all, unless a crop
        removed some)."""
        try:
            out = self._run(self.pipeline, image, boxes, seed)
        except Exception as error:  # albumentations raises many types; one sample does not end a run
            if self.without_augmentations is None:
                raise
            height, width = image.shape[:2]
            problem = " ".join(f"{type(error).__name__}: {error}".split())
            warnings.warn(f"the augmentations of input.augment_presets and input.augmentations failed on a "
                          f"training image of {width}x{height} pixels ({problem}); this sample gets the resize "
                          f"and flip alone", stacklevel=2)
            out = self._run(self.without_augmentations, image, boxes, seed)
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return out["image"], new_boxes, np.asarray(out["box_ids"], dtype=np.int64)

    @staticmethod
    def _run(pipeline: A.Compose, image: np.ndarray, boxes: np.ndarray, seed: int) -> dict:
        seed_pipeline(pipeline, seed)
        return pipeline(image=image, bboxes=boxes.reshape(-1, 4), box_ids=np.arange(len(boxes)))


class EvalTransform:
    """Deterministic shortest-edge resize (the test scale)."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return resize_shortest_edge(image, self.min_size, self.max_size)
