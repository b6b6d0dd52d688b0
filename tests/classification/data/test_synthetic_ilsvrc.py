"""The synthetic ILSVRC-format dataset: both layouts agree, it is deterministic, and it scores as expected."""

import os

import cv2
import numpy as np
import pytest

from classification.data.ilsvrc import read_kaggle_solution, read_synsets, read_xml_annotation, read_xml_dir
from classification.data.synthetic_ilsvrc import CLASSES, WNIDS, ensure_synthetic_loc
from localization.evaluation.evaluator import score_files

TINY = {"images_per_class": {"train": 2, "val": 2}, "sides": (48, 72), "seed": 3}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_synthetic_loc(str(tmp_path_factory.mktemp("shapes_loc")), **TINY)


def test_synset_list_and_layout(tiny_root):
    synsets = read_synsets(os.path.join(tiny_root, "LOC_synset_mapping.txt"))
    assert synsets.wnids == WNIDS == tuple(f"n9000000{i}" for i in range(1, 7)) and synsets.names == CLASSES
    train = read_kaggle_solution(os.path.join(tiny_root, "LOC_train_solution.csv"), synsets)
    val = read_kaggle_solution(os.path.join(tiny_root, "LOC_val_solution.csv"), synsets)
    assert sorted(train) == sorted(f"{wnid}_{k}" for wnid in WNIDS for k in (1, 2))
    assert sorted(val) == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 13)]
    assert all(image_id.split("_")[0] == objects[0][0] for image_id, objects in train.items())
    # Every val class appears twice, in a shuffled order.
    assert sorted(objects[0][0] for objects in val.values()) == sorted(WNIDS * 2)
    assert all(len({wnid for wnid, _ in objects}) == 1 for objects in [*train.values(), *val.values()])
    assert os.path.isfile(os.path.join(tiny_root, "ILSVRC/ImageSets/CLS-LOC/train_loc.txt"))


def test_xml_and_csv_hold_the_same_boxes(tiny_root):
    for split in ("train", "val"):
        from_csv = read_kaggle_solution(os.path.join(tiny_root, f"LOC_{split}_solution.csv"))
        from_xml = read_xml_dir(os.path.join(tiny_root, "ILSVRC/Annotations/CLS-LOC", split))
        assert from_xml == from_csv


def test_boxes_fit_the_images_in_inclusive_pixels(tiny_root):
    val = read_kaggle_solution(os.path.join(tiny_root, "LOC_val_solution.csv"))
    for image_id, objects in val.items():
        image = cv2.imread(os.path.join(tiny_root, "ILSVRC/Data/CLS-LOC/val", image_id + ".JPEG"))
        xml = os.path.join(tiny_root, "ILSVRC/Annotations/CLS-LOC/val", image_id + ".xml")
        annotation = read_xml_annotation(xml)
        assert (annotation.height, annotation.width) == image.shape[:2]
        assert 48 <= min(image.shape[:2]) and max(image.shape[:2]) <= 72
        for _, (x0, y0, x1, y1) in objects:
            assert 0 <= x0 <= x1 <= image.shape[1] - 1 and 0 <= y0 <= y1 <= image.shape[0] - 1
        x0, y0, x1, y1 = objects[0][1]  # the dominant object: at least a fifth of the short side
        assert max(x1 - x0 + 1, y1 - y0 + 1) >= 0.2 * min(image.shape[:2])


def test_generation_is_deterministic_and_resumable(tiny_root, tmp_path):
    again = ensure_synthetic_loc(str(tmp_path / "again"), **TINY)
    image = "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG"
    for name in ("LOC_train_solution.csv", "LOC_val_solution.csv", image):
        with open(os.path.join(tiny_root, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name
    # A split whose CSV (written last) is missing is generated again; a complete one is left alone.
    train_csv, val_csv = (os.path.join(again, f"LOC_{s}_solution.csv") for s in ("train", "val"))
    os.remove(val_csv)
    stamp = os.stat(train_csv).st_mtime_ns
    ensure_synthetic_loc(again, **TINY)
    assert os.path.isfile(val_csv) and os.stat(train_csv).st_mtime_ns == stamp


def test_several_boxes_per_image_occur(tmp_path):
    from classification.data.synthetic_ilsvrc import render_loc_image

    counts = [len(render_loc_image(np.random.default_rng([0, i]), i % 6, (64, 96))[1]) for i in range(60)]
    assert set(counts) == {1, 2}


def test_ground_truth_scores_zero_against_itself(tiny_root, tmp_path, capsys):
    gt = os.path.join(tiny_root, "LOC_val_solution.csv")
    metrics = score_files(os.path.join(tiny_root, "ILSVRC/Annotations/CLS-LOC/val"), gt,
                          os.path.join(tiny_root, "LOC_synset_mapping.txt"), str(tmp_path))
    assert metrics["top1_loc_err"] == 0.0 and metrics["top1_cls_err"] == 0.0
