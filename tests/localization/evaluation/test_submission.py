"""What the RPN's and the R-CNN's evaluations share: the val ground truth with each image's GT classes, the
files a scored submission goes to, and one set of guesses scored and written, all on hand-made cases."""

from types import SimpleNamespace

import pytest

from classification.data.ilsvrc import Synsets
from localization.evaluation.submission import (
    ImageGuesses,
    ValTruth,
    format_rows,
    guesses_metrics,
    submission_files,
    val_ground_truth,
)
from resnet_engine.errors import UserError

SYNSETS = Synsets(("n01", "n02", "n03"), ("a", "b", "c"))
GT = {"a": [("n01", (0, 0, 9, 9))], "b": [("n02", (0, 0, 9, 9))]}
TRUTH = ValTruth(GT, {"a": [0], "b": [1]}, set())


def val_cfg(root, blacklist=""):
    return SimpleNamespace(data=SimpleNamespace(root=str(root)), test=SimpleNamespace(blacklist=blacklist))


def test_val_ground_truth_keeps_the_asked_images_and_their_distinct_classes(tmp_path):
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                                   "v1,n02 0 0 5 5 n01 1 1 4 4 n02 2 2 3 3\n"
                                                   "v2,n03 0 0 1 1\n")
    truth = val_ground_truth(val_cfg(tmp_path), SYNSETS, ["v1"])
    assert truth.objects == {"v1": [("n02", (0, 0, 5, 5)), ("n01", (1, 1, 4, 4)), ("n02", (2, 2, 3, 3))]}
    assert truth.classes == {"v1": [1, 0]} and truth.blacklist == set()


def test_submission_files_are_named_by_the_mode_and_absent_without_a_folder():
    assert submission_files(None, "loc_dense") == {}
    assert submission_files("out", "loc_rcnn_1crop") == {"submission": "out/loc_rcnn_1crop_submission.csv",
                                                         "gt_class_boxes": "out/loc_rcnn_1crop_gt_class.csv"}


def test_guesses_are_scored_by_the_devkit_rules_and_written_as_submitted(tmp_path):
    # a: its class first with the GT box, right. b: a wrong class first; its own class second, far from the box.
    guesses = {"a": ImageGuesses([0, 2], {0: (0, 0, 9, 9), 2: (5, 5, 6, 6)}),
               "b": ImageGuesses([2, 1], {2: (0, 0, 9, 9), 1: (20, 20, 29, 29)})}
    files = submission_files(str(tmp_path), "loc_dense")
    metrics = guesses_metrics(guesses, TRUTH, SYNSETS, files)
    assert metrics == {"top1_loc_err": 50.0, "top5_loc_err": 50.0, "top1_cls_err": 50.0, "top5_cls_err": 0.0,
                       "gt_known_loc_err": 50.0, "num_blacklisted": 0}
    assert (tmp_path / "loc_dense_submission.csv").read_text().splitlines() == [
        "ImageId,PredictionString", "a,n01 0 0 9 9 n03 5 5 6 6", "b,n03 0 0 9 9 n02 20 20 29 29"]
    assert (tmp_path / "loc_dense_gt_class.csv").read_text().splitlines() == [
        "ImageId,PredictionString", "a,n01 0 0 9 9", "b,n02 20 20 29 29"]


def test_guesses_without_files_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    guesses = {"a": ImageGuesses([0], {0: (0, 0, 9, 9)}), "b": ImageGuesses([1], {1: (0, 0, 9, 9)})}
    assert guesses_metrics(guesses, TRUTH, SYNSETS, {})["top1_loc_err"] == 0.0
    assert list(tmp_path.iterdir()) == []


def test_the_blacklist_leaves_its_images_out_of_the_loc_errors_and_the_table_says_so(tmp_path):
    """The devkit's rule: blacklisted images leave the LOC errors (b, whose box is wrong: 50% -> 0%), not the
    CLS ones (b's class is wrong first: top-1 CLS error stays 50%)."""
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                                   "ILSVRC2012_val_00000001,n01 0 0 9 9\n"
                                                   "ILSVRC2012_val_00000002,n02 0 0 9 9\n")
    (tmp_path / "blacklist.txt").write_text("2\n")
    truth = val_ground_truth(val_cfg(tmp_path, str(tmp_path / "blacklist.txt")), SYNSETS,
                             ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"])
    assert truth.blacklist == {"ILSVRC2012_val_00000002"}
    guesses = {"ILSVRC2012_val_00000001": ImageGuesses([0, 2], {0: (0, 0, 9, 9), 2: (5, 5, 6, 6)}),
               "ILSVRC2012_val_00000002": ImageGuesses([2, 1], {2: (0, 0, 9, 9), 1: (20, 20, 29, 29)})}
    metrics = guesses_metrics(guesses, truth, SYNSETS, {})
    assert metrics == {"top1_loc_err": 0.0, "top5_loc_err": 0.0, "top1_cls_err": 50.0, "top5_cls_err": 0.0,
                       "gt_known_loc_err": 0.0, "num_blacklisted": 1}
    row = {**metrics, "method": "RPN", "network": "ResNet-101", "test_mode": "dense", "classifier": "RPN scores",
           "class_ranking": "the RPN's own scores", "num_images": 2}
    assert "(2 images, LOC errors without the 1 blacklisted (test.blacklist);" in format_rows(row)
    assert "no blacklist: every image in the LOC errors" in format_rows({**row, "num_blacklisted": 0})
    with pytest.raises(UserError, match=r"blacklist not found: .*missing.txt \(set test.blacklist to the devkit's"):
        val_ground_truth(val_cfg(tmp_path, str(tmp_path / "missing.txt")), SYNSETS, ["ILSVRC2012_val_00000001"])
