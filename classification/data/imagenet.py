"""ILSVRC classification data: image lists, the paper's training augmentation and the test-time views.

Training (the paper's ImageNet recipe): the shorter side is resized to a random length in a range
([256, 480]), a random square crop (224) is taken, flipped half the time, then colour is jittered
(brightness, contrast, saturation) and AlexNet's PCA lighting noise is added. Every random draw comes
from a generator seeded by the sampler's per-sample seed, so an augmentation depends only on
(run seed, epoch, image) and resumed runs see exactly the images they would have seen.

Testing: "1crop" (shorter side 256, the centre 224), "10crop" (the four corners and the centre, and
their mirror images) and "dense" (the whole image with its shorter side at each of several scales).
Images are RGB uint8; normalization happens in the model.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from detection.data.image_io import BadImageError, read_image, to_chw_tensor
from resnet_engine.errors import UserError
from resnet_engine.file_cache import cached, folders_fingerprint
from resnet_engine.flat_records import FlatRecords

from .ilsvrc import Box, Synsets, read_kaggle_solution, synsets_key

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
DATA_DIR = os.path.join("ILSVRC", "Data", "CLS-LOC")

# AlexNet's PCA of ImageNet RGB pixels (values in [0, 1]), as published with fb.resnet.torch.
PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
PCA_EIGENVECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]], dtype=np.float32)


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    path: str
    label: int  # 0-based: the position of the WNID in the synset list


# --------------------------------------------------------------------------------------------- image lists


def list_train_images(root: str, synsets: Synsets, source: str = "folder") -> list[ImageRecord]:
    """Training images with the label of their folder (``source="folder"``) or of the train CSV."""
    if source == "csv":
        return _train_images_from_csv(root, synsets)
    train_dir = os.path.join(root, DATA_DIR, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"training image folder not found: {train_dir} (set data.root to the folder holding "
                        f"ILSVRC/Data/CLS-LOC)")
    class_dirs = [os.path.join(train_dir, wnid) for wnid in synsets.wnids]
    names_per_class = cached("train-listing", train_dir,
                             fingerprint=lambda: folders_fingerprint([train_dir, *class_dirs], synsets_key(synsets)),
                             build=lambda: list_class_folders(class_dirs),
                             encode=lambda names: names,
                             decode=lambda payload: decode_listing(payload, len(class_dirs)))
    records = [ImageRecord(os.path.splitext(name)[0], os.path.join(class_dir, name), label)
               for label, (class_dir, names) in enumerate(zip(class_dirs, names_per_class)) for name in names]
    if not records:
        raise UserError(f"{train_dir}: no images in folders named after the WNIDs of {synsets.source}")
    warn_of_unused_folders(train_dir, synsets, names_per_class)
    return records


def warn_of_unused_folders(train_dir: str, synsets: Synsets, names_per_class: list[list[str]]) -> None:
    """Class folders that the synset list lacks are not trained on, and classes without images are never
    a training label: both are said, since either changes the task without an error."""
    source = synsets.source or "the synset list"
    with os.scandir(train_dir) as entries:
        unlisted = sorted(e.name for e in entries if e.is_dir() and e.name not in synsets)
    if unlisted:
        warnings.warn(f"{train_dir}: {len(unlisted)} class folders are not in {source} and are not trained "
                      f"on (e.g. {', '.join(unlisted[:3])}): add them to the list to train on them", stacklevel=3)
    empty = [wnid for wnid, names in zip(synsets.wnids, names_per_class) if not names]
    if empty:
        warnings.warn(f"{train_dir}: {len(empty)} of the {len(synsets)} classes of {source} have no training "
                      f"images (e.g. {', '.join(empty[:3])}): the network never sees them", stacklevel=3)


def list_class_folders(class_dirs: list[str]) -> list[list[str]]:
    """The image file names of each class folder, sorted (none for a missing folder)."""
    listing = []
    for class_dir in class_dirs:
        names: list[str] = []
        if os.path.isdir(class_dir):
            with os.scandir(class_dir) as entries:
                names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS))
        listing.append(names)
    return listing


def decode_listing(payload: list, classes: int) -> list[list[str]]:
    """The cached listing, checked: a damaged cache must not shift or drop a class."""
    if len(payload) != classes:
        raise ValueError(f"{len(payload)} class entries for {classes} classes")
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in payload):
        raise ValueError("a class entry is not a list of file names")
    return payload


def _train_images_from_csv(root: str, synsets: Synsets) -> list[ImageRecord]:
    records = [record for record, _ in labelled_train_images(root, synsets)]
    if not records:
        raise UserError(f"{os.path.join(root, 'LOC_train_solution.csv')}: no training images listed")
    return records


def labelled_train_images(root: str, synsets: Synsets) -> list[tuple[ImageRecord, list[tuple[str, Box]]]]:
    """(record, the image's GT objects) of every image of LOC_train_solution.csv, in id order. The label is
    the WNID that starts the image id (its folder, whose class every box of an ILSVRC training image has),
    else the WNID of its first box; the file is ILSVRC/Data/CLS-LOC/train/<that WNID>/<id>.JPEG."""
    csv_path = os.path.join(root, "LOC_train_solution.csv")
    objects = read_kaggle_solution(csv_path, synsets)
    train_dir = os.path.join(root, DATA_DIR, "train")
    labelled = []
    for image_id in sorted(objects):
        prefix = image_id.split("_")[0]
        if prefix not in synsets and not objects[image_id]:
            raise UserError(f"{csv_path}: image {image_id} has no box and its id does not start with a WNID, so it "
                            f"has no label: give it a box, or name it <wnid>_<number> as ILSVRC does")
        wnid = prefix if prefix in synsets else objects[image_id][0][0]
        record = ImageRecord(image_id, os.path.join(train_dir, wnid, image_id + ".JPEG"), synsets.label(wnid) - 1)
        labelled.append((record, objects[image_id]))
    check_images_exist([record for record, _ in labelled], csv_path, f"{train_dir}/<wnid>/<image id>.JPEG")
    return labelled


def check_images_exist(records: Sequence[ImageRecord], listed_in: str, layout: str, samples: int = 20) -> None:
    """One line for a wrong image folder or layout, found from a few records spread over the list: else
    every image would be skipped with a warning of its own (1.28M on ImageNet) before the run fails."""
    step = max(len(records) // samples, 1)
    sampled = list(records[::step][:samples])
    if sampled and not any(os.path.isfile(record.path) for record in sampled):
        raise UserError(f"none of {len(sampled)} images of {listed_in} tried is where the toolkit reads it, e.g. "
                        f"{sampled[0].path}: set data.root to the folder whose images are laid out as {layout}")


def list_val_images(root: str, synsets: Synsets, max_images: int = 0) -> list[ImageRecord]:
    """Val images in name order, labelled with the WNID of their first ground-truth box; in
    ILSVRC/Data/CLS-LOC/val/ itself or in a folder per class (the WNID of that box)."""
    csv_path = os.path.join(root, "LOC_val_solution.csv")
    objects = read_kaggle_solution(csv_path, synsets)
    val_dir = os.path.join(root, DATA_DIR, "val")
    labelled = []
    for image_id in sorted(objects):
        if not objects[image_id]:
            raise UserError(f"{csv_path}: image {image_id} has no box, so no label; give every image a box")
        labelled.append((image_id, objects[image_id][0][0]))
    if max_images:
        labelled = labelled[:max_images]
    if not labelled:
        raise UserError(f"{csv_path}: no val images listed")
    # Many copies sort the val images into class folders (val/<wnid>/<id>.JPEG, as torchvision's
    # ImageFolder wants them): read that layout too.
    image_id, wnid = labelled[0]
    by_class = (not os.path.isfile(os.path.join(val_dir, image_id + ".JPEG"))
                and os.path.isfile(os.path.join(val_dir, wnid, image_id + ".JPEG")))
    records = [ImageRecord(image_id, os.path.join(val_dir, wnid, image_id + ".JPEG") if by_class else
                           os.path.join(val_dir, image_id + ".JPEG"), synsets.label(wnid) - 1)
               for image_id, wnid in labelled]
    check_images_exist(records, csv_path, f"{val_dir}/<image id>.JPEG (or {val_dir}/<wnid>/<image id>.JPEG)")
    return records


# --------------------------------------------------------------------------------------------- geometry


def resize_shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so that the shorter side is ``side`` pixels, keeping the aspect ratio."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    if height <= width:
        size = (max(side, int(round(width * scale))), side)  # cv2 sizes are (width, height)
    else:
        size = (side, max(side, int(round(height * scale))))
    if size == (width, height):
        return image
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def crop(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    return image[y0:y0 + size, x0:x0 + size]


def center_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """(x0, y0) of the centred square; an odd margin leaves the extra pixel at the right/bottom."""
    return (width - size) // 2, (height - size) // 2


def five_crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(x0, y0) of the top-left, top-right, bottom-left, bottom-right and centre squares."""
    right, bottom = width - size, height - size
    return [(0, 0), (right, 0), (0, bottom), (right, bottom), center_offset(height, width, size)]


def ten_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    """The five crops of :func:`five_crop_offsets`, then the same five of the mirrored image."""
    height, width = image.shape[:2]
    crops = [crop(image, x0, y0, size) for x0, y0 in five_crop_offsets(height, width, size)]
    return crops + [np.ascontiguousarray(c[:, ::-1]) for c in crops]


# --------------------------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class CropPlacement:
    """Where a training crop came from: the resize factors from the original image, the crop's corner in
    the resized image, and whether it was mirrored (what carries boxes along, localization's)."""

    scale_x: float
    scale_y: float
    x0: int
    y0: int
    flipped: bool


class TrainTransform:
    """Scale jitter, random square crop, horizontal flip, colour jitter and PCA lighting, seeded per sample."""

    def __init__(self, short_side_range: Sequence[int], crop_size: int, flip_prob: float = 0.5,
                 color_jitter: float = 0.0, lighting_std: float = 0.1):
        self.short_low, self.short_high = (int(v) for v in short_side_range)
        self.crop_size = crop_size
        self.flip_prob = flip_prob
        self.color_jitter = color_jitter
        self.lighting_std = lighting_std

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        return self.crop_and_place(image, seed)[0]

    def crop_and_place(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, CropPlacement]:
        """The uint8 crop and where it came from; every random draw of the augmentation is made here, in
        one order, so that the classifier's and the localizer's crops of a seed are the same."""
        rng = np.random.default_rng(seed)
        original_height, original_width = image.shape[:2]
        image = resize_shorter_side(image, int(rng.integers(self.short_low, self.short_high + 1)))
        height, width = image.shape[:2]
        x0 = int(rng.integers(0, width - self.crop_size + 1))
        y0 = int(rng.integers(0, height - self.crop_size + 1))
        image = crop(image, x0, y0, self.crop_size)
        flipped = bool(rng.random() < self.flip_prob)
        if flipped:
            image = image[:, ::-1]
        pixels = image.astype(np.float32)
        if self.color_jitter > 0:
            pixels = jitter_colour(pixels, rng, self.color_jitter)
        if self.lighting_std > 0:
            pixels = add_pca_lighting(pixels, rng, self.lighting_std)
        placement = CropPlacement(width / original_width, height / original_height, x0, y0, flipped)
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), placement


def _gray(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def jitter_colour(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor in [1 - s, 1 + s], in random order."""
    factors = rng.uniform(1 - strength, 1 + strength, size=3)
    for which in rng.permutation(3):
        factor = np.float32(factors[which])
        if which == 0:
            pixels = pixels * factor
        elif which == 1:
            mean = np.float32(_gray(pixels).mean())
            pixels = (pixels - mean) * factor + mean
        else:
            gray = _gray(pixels)[..., None]
            pixels = (pixels - gray) * factor + gray
    return pixels


def add_pca_lighting(pixels: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """AlexNet's lighting noise: one RGB offset along the principal components of ImageNet's pixels."""
    alpha = rng.normal(0.0, std, size=3).astype(np.float32)
    offset = PCA_EIGENVECTORS @ (alpha * PCA_EIGENVALUES) * 255
    return pixels + offset.astype(np.float32)


class EvalTransform:
    """The views of one test image: 1 centre crop, 10 crops, or the whole image at each dense scale."""

    def __init__(self, mode: str, resize: int, crop_size: int, dense_scales: Sequence[int] = ()):
        if mode not in ("1crop", "10crop", "dense"):
            raise ValueError(f"unknown test mode {mode!r}")
        self.mode = mode
        self.resize = resize
        self.crop_size = crop_size
        self.dense_scales = [int(s) for s in dense_scales]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        if self.mode == "dense":
            # Flips are added by the model, which can then share one decoded view per scale.
            return [resize_shorter_side(image, scale) for scale in self.dense_scales]
        image = resize_shorter_side(image, self.resize)
        if self.mode == "10crop":
            return ten_crops(image, self.crop_size)
        x0, y0 = center_offset(*image.shape[:2], self.crop_size)
        return [crop(image, x0, y0, self.crop_size)]


# --------------------------------------------------------------------------------------------- dataset


class ClassificationDataset(torch.utils.data.Dataset):
    """Labelled images; items are requested as ``dataset[(index, seed)]`` (the seed drives augmentation).

    Training samples are {"image": uint8 (3, crop, crop), "label", "image_id", "skipped"}: an unreadable
    image is replaced by the next readable one (``on_bad_image="skip"``) and listed in "skipped".
    Test samples are {"views": [uint8 (3, H, W), ...], "label", "image_id"}; an unreadable test image
    gives "views": None, so that it is left out of the score instead of counted twice.
    """

    def __init__(self, records: Sequence[ImageRecord], transform, train: bool, on_bad_image: str = "skip"):
        # Flat arrays, not 1.28M record objects: forked loader workers share them instead of copying them.
        self.records = FlatRecords(records)
        self.transform = transform
        self.train = train
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, record: ImageRecord) -> np.ndarray | None:
        try:
            return read_image(record.path)
        except BadImageError as error:
            if self.on_bad_image == "fail":
                raise BadImageError(f"{error} (set data.on_bad_image=skip to continue without it)") from None
            warnings.warn(f"skipping: {error}", stacklevel=3)
            return None

    def __getitem__(self, item):
        # A bare index (tests, notebooks) uses the index itself as the augmentation seed.
        index, seed = item if isinstance(item, tuple) else (item, item)
        if not self.train:
            return self._test_sample(self.records[index])
        record, image, skipped = self._first_readable(index)
        return {"image": to_chw_tensor(self.transform(image, seed)), "label": record.label,
                "image_id": record.image_id, "skipped": skipped}

    def _first_readable(self, index: int):
        """(record, image, paths skipped) of the first readable training image from ``index`` on:
        a long run does not die on one bad file."""
        skipped = []
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            image = self._read(record)
            if image is not None:
                return record, image, skipped
            skipped.append(record.path)
        raise BadImageError(f"none of the {len(self.records)} training images can be read, e.g. "
                            f"{self.records[0].path}")

    def _test_sample(self, record: ImageRecord) -> dict:
        image = self._read(record)
        views = None if image is None else [to_chw_tensor(v) for v in self.transform(image)]
        return {"views": views, "label": record.label, "image_id": record.image_id}
