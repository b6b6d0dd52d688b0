"""The embedded default: a synthetic CIFAR-10, generated on first use in the official binary format.

Ten classes of striped textures on 32x32 pixels: class k holds stripes running at 10k degrees from
the horizontal (0, 10, ..., 90), upwards or downwards at random, give or take a few degrees: a class
and its mirror image are the same class, so the horizontal flips of the training augmentation keep
the labels true. Everything else is random: the stripes' period (3.5 to
9 pixels), phase, profile (from a sine to nearly square) and two colours; the patch they fill (an
ellipse of random centre, axes and tilt, from about a fifth of the image to all of it) on a colour
gradient; a few occluding blobs; Gaussian pixel noise. Orientation is a local cue, so a conv net
starts learning at once (unlike shape classes, which small nets pick up only after several epochs),
while neighbouring classes 10 degrees apart, fine periods near the pixel grid's limit, small patches,
occluders and noise leave a training error that deeper nets, if they optimize well, bring lower: what
the degradation experiment needs to show within a short CPU run.

The files are what the CIFAR-10 reader reads (``DIR/cifar-10-batches-bin``: data_batch_1..5.bin,
test_batch.bin, batches.meta.txt), plus ``synthetic.json`` recording the generator's settings,
written last. The generator is deterministic (the same settings give the same bytes) and each file
is written atomically, so two processes generating the set at once leave it whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from .cifar import LAYOUTS, SYNTHETIC_MARKER, CifarError, write_binary_batch, write_class_names

CLASS_ANGLES = tuple(range(0, 100, 10))  # the stripes' angle to the horizontal per class, in degrees
CLASSES = tuple(f"stripes_{angle:02d}" for angle in CLASS_ANGLES)
DEFAULT_ROOT = "datasets/cifar_synthetic"
BINARY_LAYOUT = LAYOUTS[0]  # cifar-10-batches-bin
MARKER = SYNTHETIC_MARKER
SIDE = 32
SUPERSAMPLE = 4  # patch outlines are drawn at 4x and averaged down: anti-aliased edges


@dataclass(frozen=True)
class SyntheticCifarSpec:
    """The generator's settings (its knobs of size and difficulty)."""

    train_images: int = 10000  # a multiple of 5: the 5 training batches hold as many images each
    test_images: int = 2000
    angle_jitter: float = 3.0  # degrees either side of the class's angle (classes are 10 apart)
    min_period: float = 3.5  # the stripes' period, in pixels
    max_period: float = 9.0
    min_radius: float = 8.0  # the textured ellipse's semi-axes, in pixels (16: the whole image)
    min_contrast: float = 60.0  # least RGB distance between the stripes' two colours
    clutter: int = 3  # at most this many occluding blobs
    noise: float = 20.0  # standard deviation of the Gaussian pixel noise (pixel values 0..255)
    seed: int = 0

    def __post_init__(self):
        if self.train_images < 5 or self.train_images % 5 or self.test_images < 1:
            raise ValueError("train_images must be a positive multiple of 5 (the 5 training batches are equal, as "
                             "CIFAR's) and test_images positive")
        if not 2 <= self.min_period <= self.max_period:
            raise ValueError("the periods must satisfy 2 <= min_period <= max_period (in pixels)")


# --------------------------------------------------------------------------------------------- drawing

_YS, _XS = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)


def _two_colours(rng: np.random.Generator, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least ``min_contrast`` apart: the class never shows in the colours."""
    first = rng.uniform(0, 255, size=3)
    for _ in range(100):
        second = rng.uniform(0, 255, size=3)
        if np.linalg.norm(first - second) >= min_contrast:
            return first, second
    return first, 255.0 - first  # the opposite colour: far enough for contrasts up to 220


def render_stripes(rng: np.random.Generator, angle_degrees: float, spec: SyntheticCifarSpec) -> np.ndarray:
    """Stripes running at ``angle_degrees`` (image x to the right, y down), float (32, 32, 3)."""
    normal = math.radians(angle_degrees + 90)  # the intensity varies across the stripes
    period = rng.uniform(spec.min_period, spec.max_period)
    across = _XS * math.cos(normal) + _YS * math.sin(normal)
    wave = np.sin(2 * math.pi * across / period + rng.uniform(0, 2 * math.pi))
    sharpness = rng.uniform(1.0, 4.0)  # 1: a sine, 4: nearly square
    level = (np.tanh(sharpness * wave) / math.tanh(sharpness) + 1) / 2
    dark, light = _two_colours(rng, spec.min_contrast)
    return dark + (light - dark) * level[..., None]


def render_gradient(rng: np.random.Generator) -> np.ndarray:
    """A colour gradient in a random direction, float (32, 32, 3)."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (_XS - SIDE / 2) * math.cos(direction) + (_YS - SIDE / 2) * math.sin(direction)
    ramp = np.clip(0.5 + ramp / SIDE, 0, 1)
    return start + (end - start) * ramp[..., None]


def ellipse_coverage(rng: np.random.Generator, min_radius: float) -> np.ndarray:
    """Coverage (float in [0, 1], 32 x 32) of an ellipse of random centre, semi-axes and tilt."""
    big = np.zeros((SIDE * SUPERSAMPLE, SIDE * SUPERSAMPLE), dtype=np.uint8)
    centre = rng.uniform(SIDE * 0.25, SIDE * 0.75, size=2) * SUPERSAMPLE
    axes = rng.uniform(min(min_radius, SIDE), SIDE, size=2) * SUPERSAMPLE
    cv2.ellipse(big, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])), float(rng.uniform(0, 180)),
                0, 360, 255, -1)
    return cv2.resize(big, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def add_blobs(image: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Up to ``count`` small ellipses of random colours over ``image`` (uint8, 32 x 32 x 3)."""
    for _ in range(int(rng.integers(0, count + 1))):
        centre = tuple(int(v) for v in rng.integers(0, SIDE, size=2))
        axes = tuple(int(v) for v in rng.integers(2, 7, size=2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def render_image(rng: np.random.Generator, class_index: int, spec: SyntheticCifarSpec) -> np.ndarray:
    """One uint8 image (3, 32, 32) of the class ``class_index``."""
    # Rising or falling stripes: the mirror image of an image of the class is of the class.
    sign = 1.0 if rng.random() < 0.5 else -1.0
    angle = sign * (CLASS_ANGLES[class_index] + rng.uniform(-spec.angle_jitter, spec.angle_jitter))
    stripes = render_stripes(rng, angle, spec)
    coverage = ellipse_coverage(rng, spec.min_radius)[..., None]
    image = render_gradient(rng) * (1 - coverage) + stripes * coverage
    image = add_blobs(np.clip(np.rint(image), 0, 255).astype(np.uint8), rng, spec.clutter).astype(np.float32)
    image += rng.normal(0, spec.noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------- files


def render_batch(spec: SyntheticCifarSpec, file_index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of one file: balanced classes in a shuffled order."""
    labels = np.random.default_rng([spec.seed, file_index]).permutation(np.arange(count) % len(CLASSES))
    images = np.stack([render_image(np.random.default_rng([spec.seed, file_index, k]), int(label), spec)
                       for k, label in enumerate(labels)])
    return images, labels


def generate_synthetic_cifar(folder: str, spec: SyntheticCifarSpec) -> None:
    """Write every file of the set into ``folder``; the settings file last (its presence means done)."""
    train_names = BINARY_LAYOUT.train_files
    sizes = [spec.train_images // len(train_names)] * len(train_names) + [spec.test_images]
    for file_index, (name, count) in enumerate(zip(train_names + BINARY_LAYOUT.test_files, sizes)):
        write_binary_batch(os.path.join(folder, name), *render_batch(spec, file_index, count))
    write_class_names(folder, BINARY_LAYOUT, CLASSES)
    partial = os.path.join(folder, f"{MARKER}.tmp.{os.getpid()}")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(dataclasses.asdict(spec), handle, indent=1)
    os.replace(partial, os.path.join(folder, MARKER))


def ensure_synthetic_cifar(root: str = DEFAULT_ROOT, spec: SyntheticCifarSpec | None = None) -> str:
    """Generate the synthetic set into ``root/cifar-10-batches-bin`` unless it is there; return ``root``.

    A set generated with other settings is not overwritten: delete it (or give another root).
    """
    spec = spec or SyntheticCifarSpec()
    folder = os.path.join(root, BINARY_LAYOUT.folder)
    marker = os.path.join(folder, MARKER)
    if not os.path.isfile(marker):
        generate_synthetic_cifar(folder, spec)
        return root
    try:
        with open(marker, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError) as error:
        raise CifarError(f"cannot read {marker} ({error}): delete {folder} to generate the set again") from None
    if recorded != dataclasses.asdict(spec):
        changed = ", ".join(f"{key}={recorded.get(key, 'unset')} instead of {value}"
                            for key, value in dataclasses.asdict(spec).items() if recorded.get(key) != value)
        raise CifarError(f"{folder} was generated with other settings ({changed}): delete it to generate it with "
                         f"these, or give another folder")
    return root
