"""The paper's CIFAR protocol: the splits, the per-pixel mean, the training augmentation, the loaders.

Splits (section 4.2 of the paper): the schedule was chosen on a 45k/5k train/val split of the 50k
training images; the final nets train on all 50k and are tested on the 10k test images.

    "trainval"  every image of the training files (CIFAR: 50,000)
    "train"     the training files without the last ``val_images`` of them (CIFAR: the first 45,000)
    "val"       the last ``val_images`` images of the training files (CIFAR: the last 5,000)
    "test"      the test file (CIFAR: 10,000)

The held-out images are the last ones in file order (the second half of data_batch_5): no seed is
involved, so any other program can rebuild the same split. ``val_images`` defaults to a tenth of the
training files (5,000 for CIFAR, the paper's split).

Inputs: the per-pixel mean image of the training split in use is subtracted from every image (train
and test alike; :func:`save_pixel_mean` keeps it with a run so that evaluation subtracts the same
one). Training: 4 pixels of zeros are padded on each side of the mean-subtracted image, a random
32x32 crop of the 40x40 result is taken, and flipped horizontally half the time. The padding is
zero after the mean subtraction, i.e. the padded border holds "average" pixels, which carry no
signal, as in fb.resnet.torch (torchvision-style recipes pad the raw image with black instead).
Test: the single 32x32 image, mean subtracted.

Augmentation draws come from a generator seeded by the sampler's per-sample seed, so that a sample
depends only on (run seed, epoch, image) and a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cifar import IMAGE_SHAPE, CifarArrays, CifarError, CifarSource, find_cifar, read_class_names, read_split
from .synthetic_cifar import ensure_synthetic_cifar

logger = logging.getLogger(__name__)

SPLITS = ("trainval", "train", "val", "test")
PADDING = 4
# CIFAR-10 and CIFAR-100 have 50,000 training images; the paper holds out 5,000 of them (section 4.2).
PAPER_TRAINING_IMAGES = 50_000
PAPER_VAL_IMAGES = 5_000


# --------------------------------------------------------------------------------------------- splits


def held_out_count(num_training: int, val_images: int | None) -> int:
    """How many of the last training images form "val": ``val_images``, or a tenth of them."""
    count = num_training // 10 if val_images is None else int(val_images)
    if not 0 < count < num_training:
        raise CifarError(f"val_images={val_images} must leave images on both sides of the split: give a "
                         f"number between 1 and {num_training - 1} (the training files hold {num_training})")
    return count


def warn_if_not_the_papers_split(num_training: int, val_images: int | None) -> None:
    """The paper's 45k/5k split holds out 5,000 of CIFAR's 50,000 training images; say so when a run on
    the official files holds out another number (configs/cifar_degradation.yaml's 7,500 suit the
    embedded set's 10,000 images, not these)."""
    held_out = held_out_count(num_training, val_images)
    if num_training == PAPER_TRAINING_IMAGES and held_out != PAPER_VAL_IMAGES:
        warnings.warn(f"data.val_images={val_images} holds out {held_out:,} of the {num_training:,} training "
                      f"images, training on {num_training - held_out:,}: the paper's split holds out "
                      f"{PAPER_VAL_IMAGES:,} (data.val_images=0)", stacklevel=3)


def select_split(training: CifarArrays, split: str, val_images: int | None = None) -> CifarArrays:
    """The "trainval", "train" or "val" images of the training files, as views (no copy)."""
    if split == "trainval":
        return training
    if split not in ("train", "val"):
        raise CifarError(f"unknown CIFAR split {split!r}: choose one of {', '.join(SPLITS)}")
    cut = len(training) - held_out_count(len(training), val_images)
    part = slice(0, cut) if split == "train" else slice(cut, None)
    coarse = None if training.coarse_labels is None else training.coarse_labels[part]
    return CifarArrays(training.images[part], training.labels[part], coarse)


# --------------------------------------------------------------------------------------------- the mean image


def pixel_mean(images: np.ndarray, chunk: int = 5000) -> np.ndarray:
    """The mean image (float32, 3 x 32 x 32) of uint8 ``images``, summed in float64 chunk by chunk."""
    if len(images) == 0:
        raise ValueError("the mean of no images is undefined")
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, len(images), chunk):
        total += images[start:start + chunk].sum(axis=0, dtype=np.float64)
    return (total / len(images)).astype(np.float32)


def save_pixel_mean(path: str, mean: np.ndarray) -> None:
    """Write the mean image as a .npy file (atomically)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.tmp.{os.getpid()}.npy"
    np.save(partial, np.asarray(mean, dtype=np.float32))
    os.replace(partial, path)


def load_pixel_mean(path: str) -> np.ndarray:
    """Read a mean image written by :func:`save_pixel_mean` (no pickled objects are loaded)."""
    try:
        mean = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CifarError(f"pixel mean not found: {path} (it is written by the training run; give the run's "
                         f"folder, or train again)") from None
    except (OSError, ValueError) as error:
        raise CifarError(f"cannot read the pixel mean {path} ({error}): the file is damaged") from None
    if mean.shape != IMAGE_SHAPE or not np.isfinite(mean).all():
        raise CifarError(f"{path} holds an array of shape {mean.shape} and not a finite 3x32x32 mean image: "
                         f"the file is damaged or not a pixel mean")
    return mean.astype(np.float32)


# --------------------------------------------------------------------------------------------- augmentation


def augmentation_draws(seed: int, padding: int = PADDING) -> tuple[int, int, bool]:
    """(top, left, flip) of one training view: the crop's corner in the padded image, and the mirror."""
    # One draw among the (2p+1)^2 corners times 2 mirrors, uniform: half the cost of three draws.
    offsets = 2 * padding + 1
    top, rest = divmod(int(np.random.default_rng(seed).integers(offsets * offsets * 2)), offsets * 2)
    left, flip = divmod(rest, 2)
    return top, left, bool(flip)


def pad_crop_flip(pixels: np.ndarray, seeds: Sequence[int], padding: int = PADDING) -> np.ndarray:
    """Each (3, H, W) image of ``pixels`` zero-padded, randomly cropped back to H x W, maybe mirrored."""
    count, channels, height, width = pixels.shape
    padded = np.zeros((count, channels, height + 2 * padding, width + 2 * padding), dtype=pixels.dtype)
    padded[:, :, padding:padding + height, padding:padding + width] = pixels
    views = np.empty_like(pixels)
    for k, seed in enumerate(seeds):
        top, left, flip = augmentation_draws(seed, padding)
        view = padded[k, :, top:top + height, left:left + width]
        views[k] = view[:, :, ::-1] if flip else view
    return views


# --------------------------------------------------------------------------------------------- dataset


class CifarDataset(torch.utils.data.Dataset):
    """CIFAR images as mean-subtracted float tensors, augmented when ``train``.

    ``dataset[(index, seed)]`` (or ``dataset[index]``, seeded by the index) is one sample
    {"image": float32 (3, 32, 32), "label": int}; :meth:`batch` makes a whole batch at once
    {"images": float32 (B, 3, 32, 32), "labels": int64 (B,)}, which is what the loaders yield.
    """

    def __init__(self, arrays: CifarArrays, mean: np.ndarray, train: bool, padding: int = PADDING,
                 class_names: Sequence[str] | None = None):
        self.images = arrays.images
        self.labels = arrays.labels
        self.coarse_labels = arrays.coarse_labels
        self.mean = np.asarray(mean, dtype=np.float32)
        self.train = train
        self.padding = padding
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item) -> dict:
        batch = self.batch([item])
        return {"image": batch["images"][0], "label": int(batch["labels"][0])}

    def batch(self, items: Sequence) -> dict[str, torch.Tensor]:
        """The samples of ``items``: (index, seed) pairs, or bare indices (seeded by themselves)."""
        pairs = [item if isinstance(item, tuple) else (item, item) for item in items]
        indices = np.fromiter((int(index) for index, _ in pairs), dtype=np.int64, count=len(pairs))
        pixels = self.images[indices].astype(np.float32)
        pixels -= self.mean
        if self.train:
            pixels = pad_crop_flip(pixels, [seed for _, seed in pairs], self.padding)
        return {"images": torch.from_numpy(pixels), "labels": torch.from_numpy(self.labels[indices])}


# --------------------------------------------------------------------------------------------- the whole set


@dataclass
class CifarSets:
    """The training and test datasets of one run, the mean image they subtract and where they come from."""

    train: CifarDataset
    test: CifarDataset
    mean: np.ndarray
    source: CifarSource


def _split_of(source: CifarSource, split: str, val_images: int | None, cache: dict) -> CifarArrays:
    if split not in SPLITS:
        raise CifarError(f"unknown CIFAR split {split!r}: choose one of {', '.join(SPLITS)}")
    part = "test" if split == "test" else "train"
    if part not in cache:  # the training files are read once for "train" and "val"
        cache[part] = read_split(source, part)
    return cache[part] if split == "test" else select_split(cache[part], split, val_images)


def build_cifar_sets(root: str | None = None, train_split: str = "trainval", test_split: str = "test",
                     val_images: int | None = None, num_classes: int | None = None,
                     mean: np.ndarray | None = None, padding: int = PADDING) -> CifarSets:
    """Read the CIFAR folder in ``root`` (None: the synthetic set, generated on first use) and build
    the training and test datasets. ``mean`` (a run's saved mean) replaces the training split's own."""
    if root is None:
        root = ensure_synthetic_cifar()
    source = find_cifar(root, num_classes)
    if {train_split, test_split} in ({"trainval", "val"}, {"train", "trainval"}) or train_split == test_split:
        warnings.warn(f"the test split {test_split!r} shares images with the training split {train_split!r}: "
                      f"its error is not a held-out error", stacklevel=2)
    cache: dict = {}
    train = _split_of(source, train_split, val_images, cache)
    test = _split_of(source, test_split, val_images, cache)
    if "train" in (train_split, test_split):
        warn_if_not_the_papers_split(len(cache["train"]), val_images)
    mean = pixel_mean(train.images) if mean is None else np.asarray(mean, dtype=np.float32)
    if mean.shape != IMAGE_SHAPE:
        raise ValueError(f"mean must be a 3x32x32 image, not of shape {mean.shape}")
    names = read_class_names(source)
    logger.info("%s: %d training images (%s), %d test images (%s)", source.describe(), len(train), train_split,
                len(test), test_split)
    return CifarSets(CifarDataset(train, mean, train=True, padding=padding, class_names=names),
                     CifarDataset(test, mean, train=False, padding=padding, class_names=names), mean, source)
