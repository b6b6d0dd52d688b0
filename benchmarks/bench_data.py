"""Training data pipeline images/s: this toolkit's (OpenCV decode, albumentations resize and flip
with boxes) against torchvision transforms v2, on the same JPEG files, the same operations.

    python benchmarks/bench_data.py [--images 100] [--repeats 3]

Operations, for every pipeline: decode a 640x480 JPEG (COCO's typical size), resize the shorter side
to 800 with the longer capped at 1333, random horizontal flip, the boxes transformed alike, a
uint8 CHW tensor out (normalization happens on the model's device in both toolkits). One process,
one thread; the median of several passes, interleaved. Results go to benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BOXES = np.array([[20, 30, 200, 220], [300, 100, 600, 400], [50, 300, 120, 470]], dtype=np.float32)


def write_jpegs(folder: str, count: int) -> list[str]:
    """Textured 640x480 JPEGs (smooth noise compresses like photographs, unlike flat colour)."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        small = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        image = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 40, image.shape, dtype=np.uint8))
        path = os.path.join(folder, f"{index:04d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def ours():
    from detection.data.image_io import read_image, to_chw_tensor
    from detection.data.transforms import TrainTransform

    transform = TrainTransform([800], 1333, flip_prob=0.5)

    def load(path: str, seed: int):
        image, boxes, _ = transform(read_image(path), BOXES, seed)
        return to_chw_tensor(image), torch.from_numpy(boxes)

    return load


def torchvision_v2(on_pil: bool):
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(800, max_size=1333, antialias=True), v2.RandomHorizontalFlip(0.5)])

    def load(path: str, seed: int):
        torch.manual_seed(seed)
        if on_pil:
            image = Image.open(path).convert("RGB")
            size = image.size[::-1]
        else:
            image = decode_jpeg(read_file(path))
            size = tuple(image.shape[-2:])
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(BOXES), format="XYXY", canvas_size=size)
        image, boxes = transform(image, boxes)
        if on_pil:
            image = v2.functional.pil_to_tensor(image)
        return image, boxes

    return load


def one_pass(load, paths: list[str]) -> float:
    start = time.perf_counter()
    for seed, path in enumerate(paths):
        image, _ = load(path, seed)
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) == 800
    return len(paths) / (time.perf_counter() - start)


def interleaved_rates(loaders: dict, paths: list[str], repeats: int) -> dict[str, float]:
    """Median images/s of each pipeline, passes interleaved so that all see the same machine state."""
    for load in loaders.values():
        load(paths[0], 0)  # warm-up: imports, first allocations
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, load in loaders.items():
            rates[name].append(one_pass(load, paths))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        rates = interleaved_rates({
            "this toolkit (OpenCV + albumentations)": ours(),
            "torchvision transforms v2 on PIL images": torchvision_v2(True),
            "torchvision transforms v2 on tensors (torchvision.io decode)": torchvision_v2(False),
        }, paths, args.repeats)
    reference = rates["torchvision transforms v2 on PIL images"]
    rows = [{"pipeline": name, "img_s": round(rate, 1), "vs_pil": round(rate / reference, 2)}
            for name, rate in rates.items()]
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "data.json"), "w", encoding="utf-8") as handle:
        json.dump({"rows": rows, "images": args.images, "repeats": args.repeats}, handle, indent=2)
    print("| pipeline | images/s | vs transforms v2 on PIL |\n|---|---|---|")
    for row in rows:
        print(f"| {row['pipeline']} | {row['img_s']} | {row['vs_pil']}x |")


if __name__ == "__main__":
    main()
