"""Localization data: training crops with their boxes, and test views with the geometry that maps boxes
back to the image.

Training follows the classification recipe (shorter side jittered, a random square crop, a flip, colour
jitter and PCA lighting) and carries the image's GT boxes through it. Boxes come in as inclusive pixel
indices (the files' convention) and leave as continuous crop coordinates with x2 exclusive
(x2 = xmax + 1), the frame the anchors live in.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from classification.data.ilsvrc import Synsets
from classification.data.imagenet import (
    ClassificationDataset,
    TrainTransform,
    center_offset,
    crop,
    labelled_train_images,
    resize_shorter_side,
)
from detection.boxes import flip_boxes
from detection.data.image_io import to_chw_tensor
from resnet_engine.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoxedRecord:
    image_id: str
    path: str
    label: int  # 0-based position of the WNID in the synset list
    boxes: tuple[tuple[float, float, float, float], ...]  # inclusive pixels, all of the image's class


def list_boxed_train_images(root: str, synsets: Synsets) -> list[BoxedRecord]:
    """The training images of LOC_train_solution.csv with their boxes of the image's class."""
    csv_path = os.path.join(root, "LOC_train_solution.csv")
    if not os.path.isfile(csv_path):
        raise UserError(f"training boxes not found: {csv_path} (set data.root to the folder holding "
                        f"LOC_train_solution.csv, or data.synthetic=shapes_loc)")
    records = []
    labelled = labelled_train_images(root, synsets)
    for image, objects in labelled:
        wnid = synsets.wnids[image.label]
        boxes = tuple(tuple(box) for box_wnid, box in objects if box_wnid == wnid)
        if boxes:
            records.append(BoxedRecord(image.image_id, image.path, image.label, boxes))
    if not records:
        raise UserError(f"{csv_path}: no training image with a box of its own class")
    if len(records) < len(labelled):
        logger.info("%s: %d of %d images have no box of their own class and are not trained on", csv_path,
                    len(labelled) - len(records), len(labelled))
    check_boxes_fit_images([(record.path, record.boxes) for record in records], csv_path)
    return records


def boxes_outside(boxes, width: int, height: int) -> bool:
    """Whether an inclusive-pixel box reaches past the image (a pixel of slack for rounded corners)."""
    corners = np.asarray(boxes, np.float64).reshape(-1, 4)
    return bool(((corners[:, 2] > width) | (corners[:, 3] > height)).any())


def check_boxes_fit_images(images: Sequence[tuple[str, Sequence]], csv_path: str, samples: int = 20) -> None:
    """One line when the boxes of (image path, boxes) pairs are in other pixels than the images, found from
    a few pairs spread over the list (their headers only): a resized copy of ImageNet with the original
    CSV would train on clipped or empty targets, and score boxes of one frame against another, without a
    word."""
    step = max(len(images) // samples, 1)
    checked, outside = 0, []
    for path, boxes in images[::step][:samples]:
        if not len(boxes):
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError):
            continue  # unreadable: training and evaluation skip it with their own warning
        checked += 1
        if boxes_outside(boxes, width, height):
            outside.append((path, boxes, width, height))
    if outside and 2 * len(outside) > checked:
        path, boxes, width, height = outside[0]
        raise UserError(f"{csv_path}: the boxes of {len(outside)} of {checked} images tried lie outside their image, "
                        f"e.g. {path} ({width}x{height}) has {list(boxes[0])}: the CSV gives the "
                        f"original images' pixels; use the original images (not a resized copy), or rescale the CSV")


# --------------------------------------------------------------------------------------------- training


def boxes_after_crop(boxes: np.ndarray, x0: int, y0: int, size: int,
                     min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous boxes of the resized image -> (targets, cut remnants) in crop coordinates.

    A box keeps being a target when at least ``min_visible`` of its area is inside the crop; otherwise its
    visible remnant (if any) is returned as a cut box, whose anchors the model ignores."""
    shifted = boxes - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.clip(shifted, 0, size)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    kept = visible >= min_visible * np.maximum(area, 1e-6)
    remnant = ~kept & (visible > 0)
    return clipped[kept], clipped[remnant]


class LocTrainTransform:
    """The classifier's training crop (:class:`TrainTransform`, the same draws for a seed), with the boxes
    carried along."""

    def __init__(self, short_side_range: Sequence[int], crop_size: int, flip_prob: float = 0.5,
                 color_jitter: float = 0.0, lighting_std: float = 0.1, min_visible: float = 0.5):
        self.image_transform = TrainTransform(short_side_range, crop_size, flip_prob, color_jitter, lighting_std)
        self.crop_size = crop_size
        self.min_visible = min_visible

    def __call__(self, image: np.ndarray, boxes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (uint8 crop, target boxes (n, 4), cut boxes (m, 4)), boxes continuous with x2 exclusive."""
        pixels, placement = self.image_transform.crop_and_place(image, seed)
        scale = np.array([placement.scale_x, placement.scale_y] * 2, np.float32)
        continuous = (np.asarray(boxes, np.float32).reshape(-1, 4) + np.array([0, 0, 1, 1], np.float32)) * scale
        targets, cut = boxes_after_crop(continuous, placement.x0, placement.y0, self.crop_size, self.min_visible)
        if placement.flipped:
            targets, cut = flip_boxes(targets, self.crop_size), flip_boxes(cut, self.crop_size)
        return pixels, targets, cut


# --------------------------------------------------------------------------------------------- testing


@dataclass(frozen=True)
class ViewGeometry:
    """How a test view was cut from the original image: view pixel x = (original x) * scale_x - offset_x."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0
    flipped: bool = False


def with_mirror_images(views: Sequence[torch.Tensor],
                       geometries: Sequence[ViewGeometry], flip: bool) -> list[tuple[torch.Tensor, ViewGeometry]]:
    """(pixels, geometry) of every test view, each followed by its mirror image when ``flip``."""
    variants = []
    for view, geometry in zip(views, geometries):
        variants.append((view, geometry))
        if flip:
            variants.append((view.flip(-1), dataclasses.replace(geometry, flipped=True)))
    return variants


def to_original_image(boxes: torch.Tensor, geometry: ViewGeometry, view_width: int,
                      image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes (x2 exclusive) of a view -> inclusive pixel boxes of the original (height, width) image."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    if geometry.flipped:
        x1, x2 = view_width - x2, view_width - x1
    x1 = (x1 + geometry.offset_x) / geometry.scale_x
    x2 = (x2 + geometry.offset_x) / geometry.scale_x
    y1 = (y1 + geometry.offset_y) / geometry.scale_y
    y2 = (y2 + geometry.offset_y) / geometry.scale_y
    height, width = image_size
    inclusive = torch.stack((x1, y1, x2 - 1, y2 - 1), dim=1)
    # Clip after the -1 so that a box reaching the border ends on the last pixel.
    upper = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=inclusive.dtype,
                         device=inclusive.device)
    return torch.minimum(inclusive.clamp(min=0), upper)


def inclusive_to_continuous(boxes: torch.Tensor) -> torch.Tensor:
    """Inclusive pixel boxes (xmax is the last column) -> continuous boxes with x2 exclusive."""
    return boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)


def continuous_to_inclusive(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Continuous boxes (x2 exclusive) -> inclusive pixel boxes clipped to the (height, width) image."""
    height, width = image_size
    inclusive = boxes - torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    upper = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(inclusive.clamp(min=0), upper)


class LocEvalTransform:
    """The views of one test image and where each came from: the 1-crop centre square, or every dense scale."""

    def __init__(self, mode: str, resize: int, crop_size: int, dense_scales: Sequence[int] = ()):
        if mode not in ("1crop", "dense"):
            raise ValueError(f"unknown localization test mode {mode!r}: choose 1crop or dense")
        if mode == "1crop" and resize < crop_size:
            raise ValueError(f"a {crop_size}-pixel centre crop does not fit in an image resized to {resize}")
        self.mode = mode
        self.resize = resize
        self.crop_size = crop_size
        self.dense_scales = [int(s) for s in dense_scales]

    def __call__(self, image: np.ndarray) -> list[tuple[np.ndarray, ViewGeometry]]:
        height, width = image.shape[:2]
        sides = self.dense_scales if self.mode == "dense" else [self.resize]
        views = []
        for side in sides:
            resized = resize_shorter_side(image, side)
            geometry = ViewGeometry(resized.shape[1] / width, resized.shape[0] / height)
            if self.mode == "1crop":
                x0, y0 = center_offset(*resized.shape[:2], self.crop_size)
                resized = crop(resized, x0, y0, self.crop_size)
                geometry = ViewGeometry(geometry.scale_x, geometry.scale_y, float(x0), float(y0))
            views.append((resized, geometry))
        return views


def warn_if_boxes_outside(record: BoxedRecord, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    if boxes_outside(record.boxes, width, height):
        warnings.warn(f"{record.path}: a box of LOC_train_solution.csv reaches past the {width}x{height} image; "
                      f"it is clipped to the image", stacklevel=3)


class LocalizationDataset(ClassificationDataset):
    """Boxed records; ``dataset[(index, seed)]``. Training samples add "boxes" and "cut_boxes" (float
    tensors, crop pixels, x2 exclusive) and the "seed" of the model's anchor sampling to the
    classification sample; test samples are {"views": [uint8
    (3, h, w)] or None when unreadable, "geometries", "size": (height, width), "label", "image_id"}."""

    carries_image = False  # test samples hold the original image too (ImageAndViews)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, item)
        if not self.train:
            return self._test_sample(self.records[index])
        record, image, skipped = self._first_readable(index)
        warn_if_boxes_outside(record, image)
        pixels, boxes, cut = self.transform(image, np.asarray(record.boxes, np.float32), seed)
        return {"image": to_chw_tensor(pixels), "label": record.label, "boxes": torch.from_numpy(boxes),
                "cut_boxes": torch.from_numpy(cut), "image_id": record.image_id, "skipped": skipped,
                "seed": seed}

    def _test_sample(self, record) -> dict:
        image = self._read(record)
        sample = {"views": None, "geometries": None, "size": None, "label": record.label,
                  "image_id": record.image_id, **({"image": None} if self.carries_image else {})}
        if image is not None:
            views = self.transform(image)
            sample.update(views=[to_chw_tensor(v) for v, _ in views], geometries=[g for _, g in views],
                          size=tuple(image.shape[:2]))
            if self.carries_image:
                sample["image"] = to_chw_tensor(image)
        return sample


class ImageAndViews(LocalizationDataset):
    """Test samples that also carry the original image ("image": uint8 (3, H, W), None when unreadable),
    for the R-CNN stage's crops."""

    carries_image = True
