"""Training sets given as a list (data.train plus data.train_extra): categories matched by name, renamed
classes, image ids apart, aspect ratios, unreadable images and empty images as for one set, the config's
checks, and training on a list as on the same images in one json."""

import contextlib
import io
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.config import load_detection_config
from detection.data.coco import AnnotationError
from detection.data.loader import build_test_dataset, build_train_dataset
from detection.evaluation.coco_eval import score_test_set
from detection.training import train_detector
from resnet_engine.config import ConfigError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, data_overrides

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")


def write_set(folder, categories, images, boxes) -> tuple[str, str]:
    """A COCO json and its grey images: ``images`` are (id, file name, width, height), ``boxes`` are
    (image id, category id, [x, y, w, h])."""
    os.makedirs(folder / "images", exist_ok=True)
    for _, name, width, height in images:
        cv2.imwrite(str(folder / "images" / name), np.full((height, width, 3), 90, np.uint8))
    data = {"images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
            "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for k, (i, c, b) in enumerate(boxes, start=1)],
            "categories": categories}
    (folder / "instances.json").write_text(json.dumps(data))
    return str(folder / "instances.json"), str(folder / "images")


@pytest.fixture
def two_sets(tmp_path):
    """Set a: dog (id 5) and cat (id 2), 60x40 images. Set b: its own ids and order, a bird that a lacks,
    a "kitty" that is a's cat, 40x60 images, and image ids that a uses too."""
    a = write_set(tmp_path / "a", [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
                  [(1, "a1.png", 60, 40), (2, "a2.png", 60, 40)],
                  [(1, 5, [1, 1, 10, 10]), (1, 2, [20, 5, 10, 10]), (2, 2, [5, 5, 20, 20])])
    b = write_set(tmp_path / "b", [{"id": 1, "name": "bird"}, {"id": 3, "name": "dog"}, {"id": 8, "name": "kitty"}],
                  [(2, "b1.png", 40, 60), (7, "b2.png", 40, 60), (9, "b3.png", 40, 60)],
                  [(2, 8, [1, 1, 10, 10]), (2, 1, [10, 10, 10, 10]), (7, 3, [2, 2, 30, 30]), (2, 3, [5, 30, 9, 9])])
    return a, b


def config(a, extra, *overrides):
    return load_detection_config(SHAPES_CFG, TINY_DETECTOR + [
        "data.synthetic=''", f"data.train.ann_file={a[0]}", f"data.train.img_dir={a[1]}",
        "data.train_extra=" + json.dumps(extra), *overrides])


def entry(paths, **keys) -> dict:
    return {"ann_file": paths[0], "img_dir": paths[1], **keys}


def test_a_later_set_maps_by_name_and_adds_the_names_the_first_lacks(two_sets, caplog):
    a, b = two_sets
    with caplog.at_level(logging.INFO, logger="detection.data.datasets"):
        dataset = build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})]))
    # a's ids in order give the labels (cat 2 -> 1, dog 5 -> 2); b's bird is new: label 3, id 6 after a's 5.
    assert dataset.category_map.category_ids == [2, 5, 6]
    assert dataset.category_map.names == ["cat", "dog", "bird"]
    assert caplog.messages == [f"{b[0]}: categories that {a[0]} lacks added as new classes: bird (category id 6)"]
    a_part, b_part = dataset.parts
    assert [r["labels"].tolist() for r in a_part.records] == [[2, 1], [1]]
    # b1: kitty -> cat 1, bird 3, dog 2; b2: dog 2; b3: no boxes.
    assert [r["labels"].tolist() for r in b_part.records] == [[1, 3, 2], [2], []]
    sample = dataset[(2, 5)]  # b1 through the training transform
    assert sample["file_name"] == "b1.png" and sorted(sample["labels"].tolist()) == [1, 2, 3]


def test_image_ids_stay_apart_and_the_first_set_keeps_its_own(two_sets):
    a, b = two_sets
    dataset = build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"}), entry(a)]))
    # a: 1, 2; b (2, 7, 9) shifted to start after 2: 3, 8, 10; a again after 10: 11, 12.
    assert dataset.image_ids() == [1, 2, 3, 8, 10, 11, 12]
    assert [dataset[(index, 0)]["image_id"] for index in range(len(dataset))] == [1, 2, 3, 8, 10, 11, 12]
    assert dataset.category_map.names == ["cat", "dog", "bird"]  # the third set adds nothing again
    np.testing.assert_allclose(dataset.aspect_ratios(), [1.5, 1.5, 2 / 3, 2 / 3, 2 / 3, 1.5, 1.5])


def test_empty_and_unreadable_images_of_a_later_set_are_treated_as_in_one_set(two_sets):
    a, b = two_sets
    filtered = build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})], "data.filter_empty=true"))
    assert [r["file_name"] for part in filtered.parts for r in part.records] == ["a1.png", "a2.png", "b1.png",
                                                                                   "b2.png"]
    os.remove(os.path.join(b[1], "b2.png"))
    dataset = build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})]))
    with pytest.warns(UserWarning, match=r"skipping: image not found: .*b2.png"):
        sample = dataset[(3, 0)]
    assert sample["file_name"] == "b3.png" and sample["skipped"] == [os.path.join(b[1], "b2.png")]
    failing = build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})], "data.on_bad_image=fail"))
    with pytest.raises(Exception, match=r"image not found: .*b2.png \(set data.on_bad_image=skip"):
        failing[(3, 0)]


def test_renames_must_name_a_category_on_each_side(two_sets):
    a, b = two_sets
    with pytest.raises(AnnotationError, match=r"b/instances.json: rename gives 'kity', which is no category of this "
                                              r"file \(its categories: bird, dog, kitty\)"):
        build_train_dataset(config(a, [entry(b, rename={"kity": "cat"})]))
    with pytest.raises(AnnotationError, match=r"b/instances.json: rename maps 'kitty' to 'kat', which is no category "
                                              r"of .*a/instances.json \(its categories: cat, dog\)"):
        build_train_dataset(config(a, [entry(b, rename={"kitty": "kat"})]))


def test_labels_fixed_to_category_ids_refuse_a_new_name(two_sets):
    a, b = two_sets
    with pytest.raises(AnnotationError, match=r"category 'bird' is not in .*a/instances.json, and "
                                              r"model.labels_are_category_ids=true keeps the labels to its ids: map it "
                                              r"onto one of its names with rename: \{bird: NAME\}"):
        build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})], "model.labels_are_category_ids=true",
                                   "model.num_classes=5"))
    dataset = build_train_dataset(config(a, [entry(b, rename={"kitty": "cat", "bird": "dog"})],
                                         "model.labels_are_category_ids=true", "model.num_classes=5"))
    assert [r["labels"].tolist() for r in dataset.parts[1].records] == [[2, 5, 5], [5], []]  # the ids of a


def test_labels_fixed_to_category_ids_need_every_id_within_the_class_count(two_sets, tmp_path):
    """dog has id 5: with 3 classes its boxes would all be dropped as of an unknown category."""
    a, _ = two_sets
    with pytest.raises(ConfigError, match=r"a label in 1..model.num_classes=3, and the training categories 'dog' "
                                          r"\(id 5\) lie outside it: set model.num_classes=5 \(the largest"):
        build_train_dataset(config(a, [], "model.labels_are_category_ids=true", "model.num_classes=3"))
    zero = write_set(tmp_path / "zero", [{"id": 0, "name": "pets"}, {"id": 1, "name": "cat"}],
                        [(1, "a1.png", 60, 40)], [(1, 1, [1, 1, 10, 10])])
    with pytest.raises(ConfigError, match=r"'pets' \(id 0\) lie outside it: renumber the categories from 1"):
        build_train_dataset(config(zero, [], "model.labels_are_category_ids=true", "model.num_classes=1"))


def test_a_category_without_any_training_box_is_warned_of(tmp_path):
    """An exporter's 'superclass' entry becomes a class of the model that is never trained."""
    ann_file, img_dir = write_set(tmp_path, [{"id": 0, "name": "pets"}, {"id": 1, "name": "cat"},
                                             {"id": 2, "name": "dog"}],
                                  [(1, "a1.png", 60, 40)], [(1, 1, [1, 1, 10, 10]), (1, 2, [20, 5, 10, 10])])
    with pytest.warns(UserWarning, match=r"instances.json: 1 category has no box: 'pets' \(id 0\); each is a class "
                                         r"of the model that training never sees"):
        dataset = build_train_dataset(config((ann_file, img_dir), []))
    assert dataset.category_map.names == ["pets", "cat", "dog"]


@pytest.mark.parametrize("extra, message", [
    ([{"ann_fle": "b.json", "img_dir": "b"}], r"unknown key 'ann_fle' in data.train_extra\[0\] \(did you mean "
                                              r"ann_file\?\)"),
    (["b.json"], r"data.train_extra\[0\] is 'b.json': give a mapping such as \{ann_file: b/instances.json, "
                 r"img_dir: b/images\}"),
    ([{"ann_file": "b.json", "img_dir": "b", "rename": ["kitty", "cat"]}],
     r"data.train_extra\[0\].rename=\['kitty', 'cat'\]: give \{name in its file: name in data.train\}"),
    ([{"ann_file": "b.json"}], r"data.train_extra\[0\] needs ann_file and img_dir"),
    ([{"format": "yolo"}], r"data.train_extra\[0\].format=yolo needs data.train_extra\[0\].root"),
    ([{"format": "csv", "root": "x"}], r"'data.train_extra\[0\].format' is 'csv': choose one of coco, yolo"),
    ([{"ann_file": "b.json", "img_dir": "b", "root": "x"}], r"data.train_extra\[0\].root is a key of YOLO sets"),
])
def test_a_malformed_entry_is_one_line_naming_it(two_sets, extra, message):
    with pytest.raises(ConfigError, match=message):
        config(two_sets[0], extra)


def test_a_missing_file_of_a_later_set_names_its_entry(two_sets, tmp_path):
    a, _ = two_sets
    with pytest.raises(AnnotationError, match=r"annotation file not found: .*nope.json \(set "
                                              r"data.train_extra\[0\].ann_file=/path/to/instances.json\)"):
        build_train_dataset(config(a, [{"ann_file": str(tmp_path / "nope.json"), "img_dir": str(tmp_path)}]))


def merged_json(root, parts: list[str], into: str) -> tuple[str, str]:
    """The images of several shapes jsons (same categories) in one json, in order, with image ids shifted
    past those before, as the concatenation numbers them; file names relative to ``root``."""
    merged = {"images": [], "annotations": [], "categories": None}
    for part in parts:
        data = json.loads((root / "annotations" / f"instances_{part}.json").read_text())
        merged["categories"] = merged["categories"] or data["categories"]
        offset = max((image["id"] for image in merged["images"]), default=0)
        merged["images"] += [{**image, "id": image["id"] + offset, "file_name": f"{part}/{image['file_name']}"}
                             for image in data["images"]]
        merged["annotations"] += [{**ann, "id": len(merged["annotations"]) + k + 1, "image_id": ann["image_id"] + offset}
                                  for k, ann in enumerate(data["annotations"])]
    path = root / "annotations" / f"{into}.json"
    path.write_text(json.dumps(merged))
    return str(path), str(root)


def test_training_on_a_list_matches_training_on_the_same_images_in_one_json(fixed_shapes, tmp_path):
    """Two iterations on [train, val] as two files give bit for bit the weights of two iterations on one
    json holding both: same labels, same order, same per-sample seeds."""
    merged = merged_json(fixed_shapes, ["train", "val"], "merged")
    common = TINY_DETECTOR + data_overrides(fixed_shapes) + [
        "solver.max_iter=2", "solver.steps=[1]", "test.max_images=1", "solver.checkpoint_period=0",
        "data.aspect_ratio_grouping=false"]
    listed = common + [f"output_dir={tmp_path / 'list'}", "data.train_extra=" + json.dumps(
        [{"ann_file": f"{fixed_shapes}/annotations/instances_val.json", "img_dir": f"{fixed_shapes}/val"}])]
    single = common + [f"output_dir={tmp_path / 'one'}", f"data.train.ann_file={merged[0]}",
                       f"data.train.img_dir={merged[1]}"]
    assert len(build_train_dataset(load_detection_config(SHAPES_CFG, listed))) == 10
    train_detector(load_detection_config(SHAPES_CFG, listed))
    train_detector(load_detection_config(SHAPES_CFG, single))
    runs = [torch.load(tmp_path / run / "model_final.pth", weights_only=False) for run in ("list", "one")]
    assert runs[0]["meta"]["class_names"] == runs[1]["meta"]["class_names"]
    for key, value in runs[1]["model"].items():
        assert torch.equal(runs[0]["model"][key], value), key


def test_a_model_of_another_class_count_than_the_sets_is_refused_before_training(two_sets):
    """Fewer classes would fail at the first loss; more would be outputs never trained, whose detections
    have no category id to be scored by."""
    a, b = two_sets
    with pytest.raises(ConfigError, match=r"model.num_classes=2 is below the 3 classes of the training data \(cat, "
                                          r"dog, bird\): set model.num_classes=0 to take their number"):
        build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})], "model.num_classes=2"))
    with pytest.raises(ConfigError, match=r"model.num_classes=4 is above the 3 classes of the training data \(the "
                                          r"background is not counted here"):
        build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})], "model.num_classes=4"))
    assert build_train_dataset(config(a, [entry(b, rename={"kitty": "cat"})], "model.num_classes=3")).category_map.names \
        == ["cat", "dog", "bird"]


def test_a_class_the_test_set_lacks_is_left_out_of_the_scores(two_sets, caplog):
    """A model with b's bird (id 6) on a test set of a's classes: its bird detections do not count, and the
    scores are those of pycocotools on a's json without them."""
    a, b = two_sets
    cfg = config(a, [entry(b, rename={"kitty": "cat"})], f"data.test.ann_file={a[0]}", f"data.test.img_dir={a[1]}")
    category_map = build_train_dataset(cfg).category_map
    with caplog.at_level(logging.INFO, logger="detection.data.datasets"):
        test_set = build_test_dataset(cfg, category_map, resize=True)
    assert caplog.messages == [f"{a[0]} lacks the model's categories 6 (bird): detections of them are left out of "
                               "the scores"]
    ours = [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 12], "score": 0.9},   # dog, IoU 10/12
            {"image_id": 1, "category_id": 2, "bbox": [30, 5, 10, 10], "score": 0.8},  # cat, misses
            {"image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "score": 0.7},   # cat, exact
            {"image_id": 1, "category_id": 6, "bbox": [20, 5, 10, 10], "score": 0.95},  # bird: not scored
            {"image_id": 2, "category_id": 6, "bbox": [0, 0, 5, 5], "score": 0.6}]
    scored = score_test_set(test_set.coco.dataset, [r["image_id"] for r in test_set.records], ours, [])
    reference = COCOeval(*coco_and_results(a[0], [d for d in ours if d["category_id"] != 6]), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert scored["bbox"]["AP"] == pytest.approx(reference.stats[0] * 100, abs=1e-9)
    assert 10 < scored["bbox"]["AP"] < 90
    assert np.isnan(scored["per_category"]["bird"])


def test_test_classes_the_model_lacks_are_said_to_count_as_missed(two_sets, tmp_path):
    """A model of a's cat and dog on a test set with a fox as well: COCO AP scores the fox's object as
    missed and its AP of 0 is in the mean (the loading warning called such objects "ignored")."""
    a, _ = two_sets
    test = write_set(tmp_path / "c", [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 9, "name": "fox"}],
                     [(1, "c1.png", 60, 40)], [(1, 5, [1, 1, 10, 10]), (1, 9, [30, 5, 20, 20])])
    cfg = config(a, [], f"data.test.ann_file={test[0]}", f"data.test.img_dir={test[1]}")
    category_map = build_train_dataset(cfg).category_map
    with pytest.warns(UserWarning) as caught:
        test_set = build_test_dataset(cfg, category_map, resize=True)
    messages = [str(w.message) for w in caught]
    assert (f"{test[0]}: categories 9 (fox, 1 objects) are not the model's: their objects are scored as missed, and "
            "their AP of 0 is in the mean; to score the model's categories alone, remove the others from the test "
            "set's json") in messages
    assert any("1 with unknown category ids not the model's (scored as missed)" in m for m in messages)
    perfect_dog = [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 10], "score": 0.9}]
    scored = score_test_set(test_set.coco.dataset, [r["image_id"] for r in test_set.records], perfect_dog, [])
    assert scored["per_category"]["dog"] == 100 and scored["per_category"]["fox"] == 0
    assert scored["bbox"]["AP"] == pytest.approx(50)  # cat has no object here: left out, as COCO leaves it


def coco_and_results(ann_file: str, results: list[dict]):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        return gt, gt.loadRes(results)


def test_test_sets_of_other_category_ids_are_refused_or_warned(two_sets, tmp_path):
    a, b = two_sets
    cfg = config(a, [])
    category_map = build_train_dataset(cfg).category_map  # cat 2, dog 5
    other = write_set(tmp_path / "other", [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
                      [(1, "o.png", 60, 40)], [(1, 1, [1, 1, 10, 10])])
    with pytest.raises(AnnotationError, match=r"other/instances.json: none of its category ids \(1, 3\) is one of "
                                              r"the model's \(2, 5\): give the test set the category ids of the "
                                              r"training set"):
        build_test_dataset(config(a, [], f"data.test.ann_file={other[0]}", f"data.test.img_dir={other[1]}"),
                           category_map, resize=True)
    moved = write_set(tmp_path / "moved", [{"id": 2, "name": "cat"}, {"id": 7, "name": "dog"}],
                      [(1, "o.png", 60, 40)], [(1, 2, [1, 1, 10, 10])])
    with pytest.raises(AnnotationError, match=r"moved/instances.json: category 'dog' has id 7 here but 5 in the "
                                              r"model: give the test set the category ids of the training set"):
        build_test_dataset(config(a, [], f"data.test.ann_file={moved[0]}", f"data.test.img_dir={moved[1]}"),
                           category_map, resize=True)
    renamed = write_set(tmp_path / "renamed", [{"id": 2, "name": "cat"}, {"id": 5, "name": "wolf"}],
                        [(1, "o.png", 60, 40)], [(1, 2, [1, 1, 10, 10])])
    with pytest.warns(UserWarning, match=r"renamed/instances.json: id 5 is 'wolf' here and 'dog' in the model: is "
                                         r"this the test set of the training set's categories\?"):
        build_test_dataset(config(a, [], f"data.test.ann_file={renamed[0]}", f"data.test.img_dir={renamed[1]}"),
                           category_map, resize=True)
