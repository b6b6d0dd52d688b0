"""The embedded default: a synthetic CIFAR-10, generated on first use in the official binary format.

Ten classes of shapes (disk, ring, triangle, square, hexagon, star, cross, crescent, arrow, bars) on
32x32 pixels. The class is the shape alone: its colour, size, position and rotation are random, the
background is a random colour gradient, often overlaid with stripes, and distractor strokes and
pixel noise are added. Some pairs are hard to tell apart at this resolution (hexagon and disk,
square and hexagon, ring and crescent), so the task is learnable but not trivial: a deeper net that
optimizes well fits the training set better, which is what the degradation experiment needs to show.

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

from .cifar import LAYOUTS, CifarError, write_binary_batch, write_class_names

CLASSES = ("disk", "ring", "triangle", "square", "hexagon", "star", "cross", "crescent", "arrow", "bars")
DEFAULT_ROOT = "datasets/cifar_synthetic"
BINARY_LAYOUT = LAYOUTS[0]  # cifar-10-batches-bin
MARKER = "synthetic.json"
SIDE = 32
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: anti-aliased edges


@dataclass(frozen=True)
class SyntheticCifarSpec:
    """The generator's settings (its knobs of size and difficulty)."""

    train_images: int = 10000  # a multiple of 5: the 5 training batches hold as many images each
    test_images: int = 2000
    min_size: float = 10.0  # the shape's outer diameter, in pixels
    max_size: float = 26.0
    min_contrast: float = 60.0  # least RGB distance between the shape's colour and the background under it
    stripes: float = 0.5  # probability of stripes over the background
    clutter: int = 3  # at most this many distractor strokes
    noise: float = 10.0  # standard deviation of the Gaussian pixel noise (pixel values 0..255)
    seed: int = 0

    def __post_init__(self):
        if self.train_images < 5 or self.train_images % 5 or self.test_images < 1:
            raise ValueError("train_images must be a positive multiple of 5 (the 5 training batches are equal, as "
                             "CIFAR's) and test_images positive")
        if not 0 < self.min_size <= self.max_size:
            raise ValueError("the sizes must satisfy 0 < min_size <= max_size")


# --------------------------------------------------------------------------------------------- drawing


def _regular_polygon(sides: int, radius: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon (or a star, with ``inner`` the ratio of its inner radius)."""
    count = sides * 2 if inner else sides
    radii = [radius * (inner if inner and i % 2 else 1.0) for i in range(count)]
    angles = [angle + 2 * math.pi * i / count for i in range(count)]
    return np.array([(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)])


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _fill(mask: np.ndarray, points: np.ndarray, centre: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(mask, [np.round(points + centre).astype(np.int32)], value)


def draw_shape_mask(kind: str, rng: np.random.Generator, size: float, centre: tuple[float, float]) -> np.ndarray:
    """Coverage (float32 in [0, 1], SIDE x SIDE) of one shape of outer diameter ``size`` pixels."""
    scale = SUPERSAMPLE
    big = np.zeros((SIDE * scale, SIDE * scale), dtype=np.uint8)
    r = size / 2 * scale
    c = np.array(centre) * scale
    angle = float(rng.uniform(0, 2 * math.pi))
    point = (int(round(c[0])), int(round(c[1])))
    if kind == "disk":
        cv2.circle(big, point, int(round(r)), 255, -1)
    elif kind == "ring":
        cv2.circle(big, point, int(round(r * 0.8)), 255, max(1, int(round(r * 0.4))))
    elif kind == "triangle":
        _fill(big, _regular_polygon(3, r, angle), c)
    elif kind == "square":
        _fill(big, _regular_polygon(4, r, angle), c)
    elif kind == "hexagon":
        _fill(big, _regular_polygon(6, r, angle), c)
    elif kind == "star":
        _fill(big, _regular_polygon(5, r, angle, inner=0.45), c)
    elif kind == "cross":
        t = r / 3
        arms = np.array([(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t),
                         (-r, -t), (-t, -t)])
        _fill(big, _rotate(arms, angle), c)
    elif kind == "crescent":
        cv2.circle(big, point, int(round(r)), 255, -1)
        bite = c + 0.45 * r * np.array([math.cos(angle), math.sin(angle)])
        cv2.circle(big, (int(round(bite[0])), int(round(bite[1]))), int(round(r * 0.8)), 0, -1)
    elif kind == "arrow":
        w, head = r * 0.22, r * 0.55
        outline = np.array([(-r, -w), (r - head, -w), (r - head, -2.2 * w), (r, 0), (r - head, 2.2 * w),
                            (r - head, w), (-r, w)])
        _fill(big, _rotate(outline, angle), c)
    elif kind == "bars":
        w, gap = r * 0.22, r * 0.3
        for offset in (-gap - w / 2, gap + w / 2):
            bar = np.array([(-r * 0.9, offset - w), (r * 0.9, offset - w), (r * 0.9, offset + w), (-r * 0.9, offset + w)])
            _fill(big, _rotate(bar, angle), c)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return cv2.resize(big, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def render_background(rng: np.random.Generator, spec: SyntheticCifarSpec) -> np.ndarray:
    """A colour gradient in a random direction, sometimes with stripes, and a few distractor strokes."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    direction = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / (SIDE - 1)
    ramp = np.clip(0.5 + (xs - 0.5) * math.cos(direction) + (ys - 0.5) * math.sin(direction), 0, 1)
    image = start + (end - start) * ramp[..., None]
    if rng.random() < spec.stripes:
        period, phase, tilt = rng.uniform(3, 9), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * (xs * math.cos(tilt) + ys * math.sin(tilt)) * (SIDE - 1) / period + phase)
        image = image + rng.uniform(10, 35) * wave[..., None] * rng.choice([-1.0, 1.0], size=3)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, spec.clutter + 1))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        p1, p2 = (tuple(int(v) for v in rng.integers(0, SIDE, size=2)) for _ in range(2))
        cv2.line(image, p1, p2, colour, 1, cv2.LINE_AA)
    return image.astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, min_contrast: float) -> np.ndarray:
    """A random colour at least ``min_contrast`` from ``under`` (the background's mean under the shape)."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - under) >= min_contrast:
            return colour
    return 255.0 - under  # the opposite colour, always far enough for contrasts up to 220


def render_image(rng: np.random.Generator, class_index: int, spec: SyntheticCifarSpec) -> np.ndarray:
    """One uint8 image (3, 32, 32) of the class ``class_index``."""
    background = render_background(rng, spec)
    size = float(rng.uniform(spec.min_size, spec.max_size))
    # The centre keeps at least 60% of the shape's extent inside the image.
    margin = size * 0.3
    centre = (float(rng.uniform(margin, SIDE - margin)), float(rng.uniform(margin, SIDE - margin)))
    coverage = draw_shape_mask(CLASSES[class_index], rng, size, centre)
    under = background[coverage > 0.5].mean(axis=0) if (coverage > 0.5).any() else background.mean(axis=(0, 1))
    colour = _contrasting_colour(rng, under, spec.min_contrast)
    image = background * (1 - coverage[..., None]) + colour * coverage[..., None]
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
        changed = ", ".join(f"{key}={recorded.get(key)}" for key, value in dataclasses.asdict(spec).items()
                            if recorded.get(key) != value)
        raise CifarError(f"{folder} was generated with other settings ({changed}): delete it to generate it with "
                         f"these, or give another folder")
    return root
