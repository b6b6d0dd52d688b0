"""What the RPN's and the R-CNN's evaluations share: the val ground truth with each image's GT classes, the
files a scored submission goes to, and one set of guesses scored and written, all on hand-made cases."""

from types import SimpleNamespace

from classification.data.ilsvrc import Synsets
from localization.evaluation.submission import (
    ImageGuesses,
    guesses_metrics,
    submission_files,
    val_ground_truth,
)

SYNSETS = Synsets(("n01", "n02", "n03"), ("a", "b", "c"))
GT = {"a": [("n01", (0, 0, 9, 9))], "b": [("n02", (0, 0, 9, 9))]}


def test_val_ground_truth_keeps_the_asked_images_and_their_distinct_classes(tmp_path):
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                                   "v1,n02 0 0 5 5 n01 1 1 4 4 n02 2 2 3 3\n"
                                                   "v2,n03 0 0 1 1\n")
    gt, gt_classes = val_ground_truth(SimpleNamespace(data=SimpleNamespace(root=str(tmp_path))), SYNSETS, ["v1"])
    assert gt == {"v1": [("n02", (0, 0, 5, 5)), ("n01", (1, 1, 4, 4)), ("n02", (2, 2, 3, 3))]}
    assert gt_classes == {"v1": [1, 0]}


def test_submission_files_are_named_by_the_mode_and_absent_without_a_folder():
    assert submission_files(None, "loc_dense") == {}
    assert submission_files("out", "loc_rcnn_1crop") == {"submission": "out/loc_rcnn_1crop_submission.csv",
                                                         "gt_class_boxes": "out/loc_rcnn_1crop_gt_class.csv"}


def test_guesses_are_scored_by_the_devkit_rules_and_written_as_submitted(tmp_path):
    # a: its class first with the GT box, right. b: a wrong class first; its own class second, far from the box.
    guesses = {"a": ImageGuesses([0, 2], {0: (0, 0, 9, 9), 2: (5, 5, 6, 6)}),
               "b": ImageGuesses([2, 1], {2: (0, 0, 9, 9), 1: (20, 20, 29, 29)})}
    files = submission_files(str(tmp_path), "loc_dense")
    metrics = guesses_metrics(guesses, GT, {"a": [0], "b": [1]}, SYNSETS, files)
    assert metrics == {"top1_loc_err": 50.0, "top5_loc_err": 50.0, "top1_cls_err": 50.0, "top5_cls_err": 0.0,
                       "gt_known_loc_err": 50.0}
    assert (tmp_path / "loc_dense_submission.csv").read_text().splitlines() == [
        "ImageId,PredictionString", "a,n01 0 0 9 9 n03 5 5 6 6", "b,n03 0 0 9 9 n02 20 20 29 29"]
    assert (tmp_path / "loc_dense_gt_class.csv").read_text().splitlines() == [
        "ImageId,PredictionString", "a,n01 0 0 9 9", "b,n02 20 20 29 29"]


def test_guesses_without_files_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    guesses = {"a": ImageGuesses([0], {0: (0, 0, 9, 9)}), "b": ImageGuesses([1], {1: (0, 0, 9, 9)})}
    assert guesses_metrics(guesses, GT, {"a": [0], "b": [1]}, SYNSETS, {})["top1_loc_err"] == 0.0
    assert list(tmp_path.iterdir()) == []
