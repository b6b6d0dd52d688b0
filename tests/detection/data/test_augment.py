"""Training augmentations from the config (detection/data/augment.py): the default pipeline is the paper's
resize and flip, the per-sample seed decides every draw, boxes follow the pixels, and bad entries stop the
load with one line naming them."""

import os
import random
import re
import warnings

import numpy as np
import pytest

# albumentations asks the network for a newer version on import unless told not to (as transforms.py does).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from detection.config import load_detection_config
from detection.data.augment import PRESETS, build_augmentations
from detection.data.loader import train_transform
from detection.data.transforms import TrainTransform
from resnet_engine.config import ConfigError
from tests.conftest import ROOT

# Each box drawn in its own pure colour on black: the pixels say where a box is after any transform.
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
BOXES = np.array([[20, 30, 100, 90], [150, 40, 230, 200], [40, 150, 140, 240]], dtype=np.float32)


def coloured_boxes_image(height: int = 256, width: int = 320) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for (x1, y1, x2, y2), colour in zip(BOXES.astype(int), COLOURS):
        image[y1:y2, x1:x2] = colour
    return image


def box_of_colour(image: np.ndarray, colour: np.ndarray) -> np.ndarray | None:
    """The xyxy box (pixel edges) of the pixels nearer ``colour`` than the black or gray around them."""
    channel = int(np.argmax(colour))
    others = [c for c in range(3) if c != channel]
    mask = (image[..., channel] > 127) & (image[..., others] < 100).all(axis=-1)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def config(*overrides):
    return load_detection_config(None, ["input.min_size_train=[256]", "input.max_size_train=10000", *overrides])


def run(transform, image, seed, boxes=BOXES):
    return transform(image, boxes, seed)


def test_the_default_pipeline_is_the_papers_resize_and_flip():
    """Built from a config without augmentation keys, the pipeline gives, seed for seed, the pixels and
    boxes of albumentations' own shortest-edge resize and flip; and no shipped detection config adds any."""
    for name in ("base_det.yaml", "coco_r101.yaml", "coco_r101_paper.yaml", "coco_r50_fpn.yaml", "shapes.yaml"):
        assert build_augmentations(load_detection_config(os.path.join(ROOT, "configs", name)).input) == [], name
    cfg = load_detection_config(None, ["input.min_size_train=[96,128,160]", "input.max_size_train=10000"])
    ours = train_transform(cfg)
    reference = A.Compose([A.SmallestMaxSize(max_size=[96, 128, 160]), A.HorizontalFlip(p=0.5)],
                          bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_ids"], clip=True))
    image = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    sizes, flips = set(), set()
    for seed in range(12):
        reference.set_random_state(np.random.default_rng(seed), random.Random(seed))
        expected = reference(image=image, bboxes=BOXES, box_ids=np.arange(3))
        got_image, got_boxes, kept = run(ours, image, seed)
        np.testing.assert_array_equal(got_image, expected["image"])
        np.testing.assert_allclose(got_boxes, expected["bboxes"], atol=1e-4)
        assert kept.tolist() == [0, 1, 2]
        sizes.add(got_image.shape[0])
        flips.add(bool(got_boxes[0, 0] > got_image.shape[1] / 2))
    assert sizes == {96, 128, 160} and flips == {True, False}  # every draw was exercised


def test_the_longer_side_cap_binds_as_a_longest_side_resize():
    cfg = load_detection_config(None, ["input.min_size_train=[256]", "input.max_size_train=200", "input.random_flip=0"])
    reference = A.Compose([A.LongestMaxSize(max_size=200)],
                          bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_ids"], clip=True))
    image = coloured_boxes_image()
    expected = reference(image=image, bboxes=BOXES, box_ids=np.arange(3))
    got_image, got_boxes, _ = run(train_transform(cfg), image, seed=3)
    assert got_image.shape == (160, 200, 3)
    np.testing.assert_array_equal(got_image, expected["image"])
    np.testing.assert_allclose(got_boxes, BOXES * 200 / 320, atol=1e-4)


def test_the_scale_the_flip_and_the_augmentations_are_drawn_independently():
    """Each random choice of the pipeline is a draw of its own: every training size is flipped about
    half the time, and a crop is as likely on a flipped image as on another."""
    sizes = [96, 112, 128, 144, 160, 176]
    cfg = load_detection_config(None, [f"input.min_size_train={sizes}", "input.max_size_train=10000",
                                       "input.augment_presets=[random_crop]"])
    transform, image = train_transform(cfg), coloured_boxes_image()
    flips = {size: [] for size in sizes}
    crops = {True: [], False: []}
    for seed in range(480):
        out, _, _ = run(transform, image, seed)
        red, green = box_of_colour(out, COLOURS[0]), box_of_colour(out, COLOURS[1])
        flipped = bool(red[0] > green[0])  # the red box is left of the green one in the original
        uncropped = {(size, round(size * 320 / 256)) for size in sizes}
        cropped = out.shape[:2] not in uncropped
        if not cropped:
            flips[out.shape[0]].append(flipped)
        crops[flipped].append(cropped)
    for size, flipped in flips.items():
        assert len(flipped) >= 20 and 0.25 < np.mean(flipped) < 0.75, (size, len(flipped), np.mean(flipped))
    assert 0.3 < np.mean(crops[True]) < 0.7 and 0.3 < np.mean(crops[False]) < 0.7, crops


def test_same_seed_same_augmentation_other_seed_another():
    cfg = config("input.augment_presets=[color_jitter, random_crop]",
                 "input.augmentations=[{name: OneOf, transforms: [{name: Blur}, {name: ToGray}], p: 0.7}, "
                 "{name: RandomSizedBBoxSafeCrop, height: 192, width: 224, p: 0.9}]")
    image = coloured_boxes_image()
    first = run(train_transform(cfg), image, seed=11)
    again = run(train_transform(cfg), image, seed=11)  # a new pipeline, as in a resumed run's workers
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    others = [run(train_transform(cfg), image, seed) for seed in (12, 13, 14)]
    assert all(not np.array_equal(first[0], other[0]) or not np.array_equal(first[1], other[1]) for other in others)


def test_a_crop_moves_clips_and_drops_boxes_by_hand():
    """Crop x 10..60, y 5..45 of a 256x320 image (the resize keeps its size, the flip is off)."""
    cfg = config("input.random_flip=0", "input.augmentations=[{name: Crop, x_min: 10, y_min: 5, x_max: 60, y_max: 45}]")
    image = np.random.default_rng(1).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    boxes = np.array([[20, 10, 40, 30],    # inside: shifted by (-10, -5)
                      [0, 0, 15, 8],       # across the top-left corner: clipped
                      [55, 40, 80, 60],    # across the bottom-right corner: clipped
                      [70, 50, 90, 58]],   # outside: dropped with its id
                     dtype=np.float32)
    got_image, got_boxes, kept = run(train_transform(cfg), image, 0, boxes)
    np.testing.assert_array_equal(got_image, image[5:45, 10:60])
    np.testing.assert_allclose(got_boxes, [[10, 5, 30, 25], [0, 0, 5, 3], [45, 35, 50, 40]], atol=1e-4)
    assert kept.tolist() == [0, 1, 2]


def test_a_flip_from_the_yaml_mirrors_boxes_by_hand():
    cfg = config("input.random_flip=0", "input.augmentations=[{name: HorizontalFlip, p: 1.0}]")
    image = coloured_boxes_image()
    got_image, got_boxes, _ = run(train_transform(cfg), image, 5)
    np.testing.assert_array_equal(got_image, image[:, ::-1])
    x1, y1, x2, y2 = BOXES.T
    np.testing.assert_allclose(got_boxes, np.stack([320 - x2, y1, 320 - x1, y2], axis=1), atol=1e-4)


def test_a_colour_transform_changes_pixels_not_boxes():
    image = coloured_boxes_image()
    plain = train_transform(config())
    jitter = train_transform(config("input.augmentations=[{name: ColorJitter, brightness: 0.5, contrast: 0.5, "
                                     "saturation: 0.5, hue: 0.2, p: 1.0}]"))
    for seed in range(4):
        plain_image, plain_boxes, _ = run(plain, image, seed)
        jittered_image, jittered_boxes, _ = run(jitter, image, seed)
        np.testing.assert_array_equal(jittered_boxes, plain_boxes)  # the resize and flip drew the same
        assert jittered_image.shape == plain_image.shape and not np.array_equal(jittered_image, plain_image)


@pytest.mark.parametrize("preset", ["large_scale_jitter", "random_crop"])
def test_the_geometric_presets_keep_boxes_on_their_pixels(preset):
    """Each output box bounds the pixels of its colour (to 2 pixels: the edges are interpolated)."""
    transform = train_transform(config(f"input.augment_presets=[{preset}]"))
    image = coloured_boxes_image()
    checked, changed = 0, 0
    for seed in range(10):
        got_image, got_boxes, kept = run(transform, image, seed)
        changed += got_image.shape != image.shape
        for box, box_id in zip(got_boxes, kept):
            if (box[2] - box[0]) * (box[3] - box[1]) < 25:  # too few pixels to locate
                continue
            np.testing.assert_allclose(box, box_of_colour(got_image, COLOURS[box_id]), atol=2.0)
            checked += 1
        if preset == "large_scale_jitter":
            assert got_image.shape == (1024, 1024, 3)
        else:
            assert kept.tolist() == [0, 1, 2]  # a bbox-safe crop keeps every box whole
    assert checked >= 10 and changed >= 1


def test_large_scale_jitter_scales_by_0_1_to_2_and_pads_with_gray():
    """The longer side (320) goes to 1024 times a factor in [0.1, 2.0], which an uncut box's width tells;
    an image below 1024x1024 is padded with 128 at its right and bottom."""
    transform = train_transform(config("input.random_flip=0", "input.augment_presets=[large_scale_jitter]"))
    image = coloured_boxes_image()
    factors = []
    for seed in range(40):
        got_image, got_boxes, kept = run(transform, image, seed)
        assert got_image.shape == (1024, 1024, 3)
        uncut = [(box, box_id) for box, box_id in zip(got_boxes, kept)
                 if box[0] > 0 and box[1] > 0 and box[2] < 1024 and box[3] < 1024]
        if not uncut:
            continue
        box, box_id = uncut[0]
        factors.append((box[2] - box[0]) / ((BOXES[box_id, 2] - BOXES[box_id, 0]) * 1024 / 320))
        if factors[-1] < 0.5:
            assert (got_image[-10:, -10:] == 128).all()
    assert 0.1 - 1e-2 <= min(factors) < 0.5 and 1.5 < max(factors) <= 2.0 + 1e-2


def test_a_sample_the_augmentations_fail_on_gets_the_resize_and_flip_with_a_warning():
    """A crop larger than one image: the run goes on with that sample as without augmentations."""
    image = coloured_boxes_image(100, 120)
    boxes = np.array([[20, 30, 100, 90]], dtype=np.float32)
    with_crop = TrainTransform([100], 10000, 0.5, [A.RandomCrop(height=200, width=200)])
    with pytest.warns(UserWarning, match=r"failed on a training image of 120x100 pixels \(CropSizeError"):
        got = run(with_crop, image, 4, boxes)
    expected = run(TrainTransform([100], 10000, 0.5), image, 4, boxes)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("override, message", [
    ("input.augmentations=[{name: ColorJiter}]",
     "input.augmentations[0]: albumentations {version} has no transform 'ColorJiter' (did you mean ColorJitter?)"),
    ("input.augmentations=[{name: ColorJitter, brightnes: 0.2}]",
     "input.augmentations[0] (ColorJitter): no argument 'brightnes' (did you mean brightness?)"),
    ("input.augmentations=[{name: ColorJitter, brightness: -1}]",
     "input.augmentations[0] (ColorJitter) has bad arguments (brightness: Value error, If brightness is a single "
     "number, it must be non negative): fix them"),
    ("input.augmentations=[{name: RandomSizedBBoxSafeCrop, height: 64}]",
     "input.augmentations[0] (RandomSizedBBoxSafeCrop) has bad arguments (width: Field required)"),
    ("input.augmentations=[{name: Blur}, ColorJitter]",
     "input.augmentations[1]='ColorJitter': give a mapping with the name of an albumentations transform"),
    ("input.augmentations=[{name: MaskDropout}]",
     "input.augmentations[0] (MaskDropout) fails on a 256x256 image with boxes (ValueError: MaskDropout requires"),
    ("input.augmentations=[{name: CenterCrop3D, size: [2, 2, 2]}]",
     "input.augmentations[0] (CenterCrop3D) does not transform an image with its boxes"),
    ("input.augmentations=[{name: Normalize}]",
     "input.augmentations[0] (Normalize) turns the 8-bit RGB image into a float32 array of shape (256, 256, 3)"),
    ("input.augmentations=[{name: RandomCrop, height: 512, width: 512, p: 0.1}]",
     "input.augmentations[0] (RandomCrop) fails on a 256x256 image with boxes (CropSizeError"),
    ("input.augmentations=[{name: OneOf, transforms: [{name: Blur}, {name: Bluur}]}]",
     "input.augmentations[0].transforms[1]: albumentations {version} has no transform 'Bluur' (did you mean Blur?)"),
    ("input.augment_presets=[color_jitter, lsj]",
     "input.augment_presets[1]: no preset 'lsj' (the presets are color_jitter, large_scale_jitter, random_crop)"),
])
def test_a_bad_entry_stops_the_load_with_one_line_naming_it(override, message):
    with pytest.raises(ConfigError) as caught:
        config(override)
    text = str(caught.value)
    assert text.startswith(message.format(version=A.__version__)) and "\n" not in text


def test_the_docs_yaml_and_presets(tmp_path):
    """The YAML of docs/CUSTOM_DATA.md's Augmentation section loads as a config file, and the section
    names every preset and its transforms."""
    with open(os.path.join(ROOT, "docs", "CUSTOM_DATA.md"), encoding="utf-8") as handle:
        section = handle.read().split("## Augmentation", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert snippets
    for index, snippet in enumerate(snippets):
        path = tmp_path / f"augment{index}.yaml"
        path.write_text(snippet)
        cfg = load_detection_config(str(path), ["input.min_size_train=[256]"])
        assert len(build_augmentations(cfg.input)) >= 1
    for name, entries in PRESETS.items():
        assert f"`{name}`" in section
        for entry in entries:
            assert entry["name"] in section, (name, entry["name"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations ignores no argument of a preset, and deprecates none
        for name in PRESETS:
            build_augmentations(config(f"input.augment_presets=[{name}]").input)
