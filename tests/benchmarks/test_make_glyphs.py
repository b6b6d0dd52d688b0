"""The second synthetic dataset (benchmarks/make_glyphs.py) used to check that the recipe generalizes."""

import json

import numpy as np

from detection.data.coco import CocoDetection
from tests.helpers import load_benchmark_script


def load_generator():
    return load_benchmark_script("make_glyphs")


def test_glyph_masks_are_cropped_to_their_painted_pixels():
    glyphs = load_generator()
    for index, letter in enumerate(glyphs.LETTERS):
        mask = glyphs.glyph_mask(np.random.default_rng(index), letter, 40.0) > 64
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert 20 <= mask.shape[0] <= 90


def test_split_is_deterministic_and_loads_with_non_contiguous_ids(tmp_path):
    glyphs = load_generator()
    first = glyphs.generate_split(str(tmp_path / "a"), "val", 6)
    second = glyphs.generate_split(str(tmp_path / "b"), "val", 6)
    with open(first, encoding="utf-8") as a, open(second, encoding="utf-8") as b:
        assert json.load(a) == json.load(b)
    dataset = CocoDetection(first, str(tmp_path / "a" / "val"), train=False)
    assert dataset.category_map.num_classes == len(glyphs.LETTERS)
    assert [dataset.category_map.category_of(label) for label in range(1, 9)] == list(glyphs.CATEGORY_IDS)
    with open(first, encoding="utf-8") as handle:
        data = json.load(handle)
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
