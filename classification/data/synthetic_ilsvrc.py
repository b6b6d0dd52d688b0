"""A small synthetic ILSVRC CLS-LOC dataset, generated on first use, in both on-disk layouts.

Six shape classes with made-up WNIDs (n90000001..n90000006). Each image shows ONE dominant object on a
cluttered background (lines and blobs that are not objects); about one image in six also has a second,
smaller object of the same class, so an image can have several GT boxes of its one label, as in ILSVRC.

Written under ``root`` exactly as the Kaggle download is laid out, plus the devkit XMLs:

    LOC_synset_mapping.txt, LOC_train_solution.csv, LOC_val_solution.csv
    ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<k>.JPEG, ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<8 digits>.JPEG
    ILSVRC/Annotations/CLS-LOC/{train/<wnid>/<wnid>_<k>.xml, val/ILSVRC2012_val_<8 digits>.xml}
    ILSVRC/ImageSets/CLS-LOC/{train_loc.txt, val.txt}

Boxes are inclusive pixel indices (xmin = first column the object covers, xmax = the last), measured on the
rendered object mask. Generation is deterministic: the same seed and sizes give the same files.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from detection.data.shapes import polygon_points, render_background

from .ilsvrc import Box

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
WNIDS = tuple(f"n{90000001 + i}" for i in range(len(CLASSES)))
DEFAULT_ROOT = "datasets/shapes_loc"
IMAGES_PER_CLASS = {"train": 100, "val": 20}
IMAGE_SIDES = (160, 256)  # each side of an image is drawn from this range (pixels)
SECOND_OBJECT_PROBABILITY = 0.15


def is_synthetic_loc(wnids) -> bool:
    """Whether a class list is this generator's (its made-up WNIDs), in whatever folder the set was written."""
    return tuple(wnids) == WNIDS


def _draw(image: np.ndarray, mask: np.ndarray, kind: str, centre: tuple[float, float], size: float,
          angle: float, colour: tuple[int, ...]) -> None:
    """Draw one object into the image and (as 255) into its own mask; 2 fractional bits of precision."""
    cx, cy = centre
    centre_fixed = (int(round(cx * 4)), int(round(cy * 4)))
    if kind in ("circle", "ring"):
        thickness = -1 if kind == "circle" else max(2, int(round(size * 0.18)))
        # cv2 centres the ring's stroke on the radius: its outer edge is at size / 2 either way.
        radius = int(round(size * 2)) - (thickness * 2 if thickness > 0 else 0)
        for target, value in ((image, colour), (mask, 255)):
            cv2.circle(target, centre_fixed, radius, value, thickness, cv2.LINE_AA, shift=2)
        return
    points = np.round(polygon_points(kind, cx, cy, size, angle) * 4).astype(np.int32)
    for target, value in ((image, colour), (mask, 255)):
        cv2.fillPoly(target, [points], value, cv2.LINE_AA, shift=2)


def _mask_box(mask: np.ndarray) -> Box:
    """Inclusive pixel box of the pixels at least half covered by the object."""
    ys, xs = np.nonzero(mask >= 128)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def _overlaps(a: Box, b: Box) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, ...]:
    # Redraw colours close to the local background so that the object stays visible.
    mean = background.reshape(-1, 3).mean(axis=0)
    colour = rng.integers(0, 256, 3)
    for _ in range(8):
        if np.abs(colour - mean).sum() > 120:
            break
        colour = rng.integers(0, 256, 3)
    return tuple(int(c) for c in colour)


def render_loc_image(rng: np.random.Generator, class_index: int,
                     sides: tuple[int, int] = IMAGE_SIDES) -> tuple[np.ndarray, list[Box]]:
    """One RGB image of class ``class_index`` and its GT boxes (the dominant object first)."""
    height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
    image = render_background(rng, height, width)
    kind = CLASSES[class_index]
    boxes: list[Box] = []
    sizes = [rng.uniform(0.4, 0.8) * min(height, width)]
    if rng.random() < SECOND_OBJECT_PROBABILITY:
        sizes.append(rng.uniform(0.18, 0.3) * min(height, width))
    for size in sizes:
        for _ in range(10):  # a second object goes where it does not touch the first
            centre = (rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2))
            mask = np.zeros((height, width), np.uint8)
            colour = _contrasting_colour(rng, image)
            drawn = image.copy()
            _draw(drawn, mask, kind, centre, size, float(rng.uniform(0, 2 * math.pi)), colour)
            box = _mask_box(mask)
            if not any(_overlaps(box, other) for other in boxes):
                image = drawn
                boxes.append(box)
                break
    return image, boxes


def _xml_text(folder: str, stem: str, width: int, height: int, wnid: str, boxes: list[Box]) -> str:
    objects = "".join(
        f"\t<object>\n\t\t<name>{wnid}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n"
        f"\t\t\t<xmax>{b[2]}</xmax>\n\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n" for b in boxes)
    return (f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{stem}</filename>\n"
            "\t<source>\n\t\t<database>synthetic shapes (ILSVRC CLS-LOC layout)</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n"
            f"\t</size>\n\t<segmented>0</segmented>\n{objects}</annotation>\n")


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def _split_plan(split: str, per_class: int, seed: int) -> list[tuple[str, str, int]]:
    """(image id, folder below Data|Annotations/CLS-LOC/<split>, class index) for every image of a split."""
    if split == "train":
        return [(f"{wnid}_{k}", wnid, c) for c, wnid in enumerate(WNIDS) for k in range(1, per_class + 1)]
    # Val images are numbered in a shuffled class order, as the real val set is.
    classes = np.random.default_rng([seed, 99]).permutation(np.repeat(np.arange(len(WNIDS)), per_class))
    return [(f"ILSVRC2012_val_{i + 1:08d}", "", int(c)) for i, c in enumerate(classes)]


def generate_split(root: str, split: str, per_class: int, seed: int = 0,
                   sides: tuple[int, int] = IMAGE_SIDES) -> str:
    """Write one split (images, XMLs, image list, then the Kaggle CSV last); return the CSV path."""
    base = os.path.join(root, "ILSVRC")
    rows, xml_files, list_lines = [], [], []
    split_code = {"train": 0, "val": 1}.get(split, 2)
    for number, (stem, folder, class_index) in enumerate(_split_plan(split, per_class, seed), start=1):
        image, boxes = render_loc_image(np.random.default_rng([seed, split_code, number]), class_index, sides)
        image_dir = os.path.join(base, "Data", "CLS-LOC", split, folder)
        os.makedirs(image_dir, exist_ok=True)
        cv2.imwrite(os.path.join(image_dir, stem + ".JPEG"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        wnid = WNIDS[class_index]
        xml_path = os.path.join(base, "Annotations", "CLS-LOC", split, folder, stem + ".xml")
        height, width = image.shape[:2]
        xml_files.append((xml_path, _xml_text(folder or split, stem, width, height, wnid, boxes)))
        rows.append(f"{stem}," + " ".join(f"{wnid} {b[0]} {b[1]} {b[2]} {b[3]}" for b in boxes))
        list_lines.append(f"{os.path.join(folder, stem) if folder else stem} {number}")
    for path, text in xml_files:  # annotations after every image: their presence means the images exist
        _write_text(path, text)
    list_name = "train_loc.txt" if split == "train" else f"{split}.txt"
    _write_text(os.path.join(base, "ImageSets", "CLS-LOC", list_name), "\n".join(list_lines) + "\n")
    csv_path = os.path.join(root, f"LOC_{split}_solution.csv")
    # Written last: its presence means the split is complete.
    _write_text(csv_path, "ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return csv_path


def ensure_synthetic_loc(root: str = DEFAULT_ROOT, images_per_class: dict[str, int] | None = None,
                         seed: int = 0, sides: tuple[int, int] = IMAGE_SIDES) -> str:
    """Generate any split whose LOC_<split>_solution.csv is missing; return ``root``.

    An existing split is kept as it is, whatever sizes are asked for: delete the folder to regenerate.
    """
    synset_path = os.path.join(root, "LOC_synset_mapping.txt")
    if not os.path.isfile(synset_path):
        _write_text(synset_path, "".join(f"{wnid} {name}\n" for wnid, name in zip(WNIDS, CLASSES)))
    for split, per_class in (images_per_class or IMAGES_PER_CLASS).items():
        if not os.path.isfile(os.path.join(root, f"LOC_{split}_solution.csv")):
            generate_split(root, split, per_class, seed, sides)
    return root
