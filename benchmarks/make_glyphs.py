"""A second synthetic COCO-format dataset, unlike shapes, to check that the embedded recipe generalizes.

    python benchmarks/make_glyphs.py                    # writes datasets/glyphs/ (400 train, 150 val)
    python benchmarks/bench_tv_scratch.py --data datasets/glyphs/annotations/instances_train.json \\
        datasets/glyphs/train datasets/glyphs/annotations/instances_val.json datasets/glyphs/val

Glyphs are letters drawn with OpenCV's Hershey fonts (three faces, italic or not, stroke widths
that vary), rotated by up to 25 degrees, on backgrounds of blurred colour noise patches rather than
the gradients of shapes. Classes are eight letters whose category ids are not contiguous, as in
COCO. Boxes are the tight extent of the painted pixels. Image sizes, object counts and scales
differ from shapes too: 320-480 px on the long side, 0-6 objects of 16-120 px.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LETTERS = ("A", "E", "F", "H", "K", "P", "R", "Y")
CATEGORY_IDS = (2, 3, 5, 8, 13, 21, 34, 55)  # deliberately not 1..K
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)
SPLITS = {"train": 400, "val": 150}


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-frequency colour noise: a coarse random grid upsampled, plus fine grain."""
    cells = int(rng.integers(3, 9))
    coarse = rng.integers(30, 226, size=(cells, cells, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def glyph_mask(rng: np.random.Generator, letter: str, height_px: float) -> np.ndarray:
    """A uint8 mask of one letter about ``height_px`` tall, rotated, cropped to its painted pixels."""
    font = FONTS[int(rng.integers(len(FONTS)))] | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
    (text_w, text_h), _ = cv2.getTextSize(letter, font, 1.0, 1)
    scale = height_px / text_h
    thickness = max(1, int(round(scale * rng.uniform(1.2, 3.0))))
    pad = thickness + 4
    size = (int(text_h * scale * 1.6) + 2 * pad, int(text_w * scale * 1.6) + 2 * pad)
    mask = np.zeros(size, dtype=np.uint8)
    origin = (pad, int(text_h * scale) + pad)
    cv2.putText(mask, letter, origin, font, scale, 255, thickness, cv2.LINE_AA)
    angle = float(rng.uniform(-25, 25))
    side = int(math.hypot(*mask.shape)) + 2
    canvas = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - mask.shape[0]) // 2, (side - mask.shape[1]) // 2
    canvas[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
    rotation = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, rotation, (side, side), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(canvas > 64)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One image and its objects: [{"category": index, "bbox": [x, y, w, h]}]."""
    long_side, short_side = int(rng.integers(320, 481)), int(rng.integers(240, 321))
    height, width = (short_side, long_side) if rng.random() < 0.6 else (long_side, short_side)
    image = render_background(rng, height, width)
    num_objects = 0 if rng.random() < 0.06 else int(rng.integers(1, 7))
    occupied = np.zeros((height, width), dtype=bool)
    objects: list[dict] = []
    for _ in range(num_objects * 4):
        if len(objects) == num_objects:
            break
        category = int(rng.integers(len(LETTERS)))
        mask = glyph_mask(rng, LETTERS[category], float(np.exp(rng.uniform(math.log(16), math.log(120)))))
        h, w = mask.shape
        if h >= height or w >= width:
            continue
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        if occupied[y:y + h, x:x + w].mean() > 0.2:  # partial overlaps allowed, hidden letters not
            continue
        occupied[y:y + h, x:x + w] = True
        colour = rng.integers(0, 256, 3).astype(np.float32)
        alpha = (mask.astype(np.float32) / 255)[..., None]
        patch = image[y:y + h, x:x + w].astype(np.float32)
        image[y:y + h, x:x + w] = np.round(patch * (1 - alpha) + colour * alpha).astype(np.uint8)
        objects.append({"category": category, "bbox": [x, y, w, h]})
    return image, objects


def generate_split(root: str, split: str, num_images: int, seed: int = 0) -> str:
    """Write ``root/split/*.jpg`` and ``root/annotations/instances_split.json``; return the json path."""
    from detection.data.shapes import write_coco_split

    stream = 7 + {"train": 0, "val": 1}.get(split, 2)

    def samples():
        for index in range(num_images):
            image, objects = render_image(np.random.default_rng([seed, stream, index]))
            # Image ids that are not positions either.
            yield 1000 + index, f"{split}_{index:05d}.jpg", image, [
                {"category_id": CATEGORY_IDS[obj["category"]], "bbox": obj["bbox"]} for obj in objects]

    categories = [{"id": cid, "name": letter, "supercategory": "letter"} for cid, letter in zip(CATEGORY_IDS, LETTERS)]
    return write_coco_split(root, split, samples(), categories, jpeg_quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/glyphs")
    parser.add_argument("--train", type=int, default=SPLITS["train"])
    parser.add_argument("--val", type=int, default=SPLITS["val"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, count in (("train", args.train), ("val", args.val)):
        print(generate_split(args.root, split, count, args.seed))


if __name__ == "__main__":
    main()
