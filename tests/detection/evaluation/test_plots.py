"""The precision-recall curves of tools/eval_det.py --plots, from COCOeval's precision array: checked
against a hand-made array and against pycocotools' own run."""

import numpy as np
import pytest

from detection.evaluation.coco_eval import evaluate_detections
from detection.evaluation.plots import IOU_LEVELS, precision_curve
from tests.detection.evaluation.test_coco_eval import fixture_dataset, pycocotools_stats


def hand_made_precision() -> np.ndarray:
    """(10 IoUs, 101 recalls, 2 categories, 4 areas, 3 detection limits). Category 0, all areas, 100
    detections: precision 1 - 0.1 * t at IoU index t up to recall 0.50, 0 after, IoU 0.95 undefined (-1)
    and recall 1.0 undefined at every IoU. Category 1 has no ground truth (-1 throughout). Every other
    area and detection limit holds 0.9, which a curve read from the wrong slice would show."""
    precision = np.full((10, 101, 2, 4, 3), 0.9)
    wanted = np.zeros((10, 101))
    wanted[:, :51] = (1 - 0.1 * np.arange(10))[:, None]
    wanted[9, :] = -1
    wanted[:, 100] = -1
    precision[:, :, 0, 0, 2] = wanted
    precision[:, :, 1, 0, 2] = -1
    return precision


def test_curves_of_a_hand_made_precision_array():
    precision = hand_made_precision()
    at_50 = precision_curve(precision, IOU_LEVELS["IoU 0.50"], 0)
    np.testing.assert_array_equal(at_50, [1.0] * 51 + [0.0] * 49 + [-1.0])
    at_75 = precision_curve(precision, IOU_LEVELS["IoU 0.75"], 0)
    np.testing.assert_allclose(at_75, [0.5] * 51 + [0.0] * 49 + [-1.0], atol=1e-12)
    # The mean over IoUs 0.50 to 0.90 (0.95 undefined): 1 - 0.1 * mean(0..8) = 0.6. Averaging the -1 of
    # IoU 0.95 in would give 0.44; recall 1.0, undefined at every IoU, stays undefined.
    mean = precision_curve(precision, IOU_LEVELS["IoU 0.50:0.95"], 0)
    np.testing.assert_allclose(mean, [0.6] * 51 + [0.0] * 49 + [-1.0], atol=1e-12)
    for iou_index in IOU_LEVELS.values():  # no ground truth: no curve to draw
        np.testing.assert_array_equal(precision_curve(precision, iou_index, 1), np.full(101, -1.0))


def test_curves_are_those_of_pycocotools_for_every_category():
    """Category k of the per-category table (the order plot_precision_recall draws in) is pycocotools'
    category of the same id; each curve averages over recall to that class's AP50, AP75 and AP scored alone."""
    gt, results = fixture_dataset()
    ours = evaluate_detections(gt, results, "pycocotools")
    reference = pycocotools_stats(gt, results)
    ids_by_name = {category["name"]: category["id"] for category in gt["categories"]}
    assert list(ours["per_category"]) == ["a", "b", "c", "d"]
    for index, name in enumerate(ours["per_category"]):
        k = reference.params.catIds.index(ids_by_name[name])
        expected = reference.eval["precision"][0, :, k, 0, -1]
        np.testing.assert_array_equal(precision_curve(ours["precision"], IOU_LEVELS["IoU 0.50"], index), expected)
        np.testing.assert_array_equal(precision_curve(ours["precision"], IOU_LEVELS["IoU 0.75"], index),
                                      reference.eval["precision"][5, :, k, 0, -1])
        if name == "d":  # detections but no ground truth
            assert (expected == -1).all()
            continue
        alone = pycocotools_stats(gt, results, [ids_by_name[name]]).stats
        for label, stat in (("IoU 0.50", alone[1]), ("IoU 0.75", alone[2]), ("IoU 0.50:0.95", alone[0])):
            curve = precision_curve(ours["precision"], IOU_LEVELS[label], index)
            assert curve.mean() == pytest.approx(stat, abs=1e-12), (name, label)
    assert 0 < ours["per_category"]["a"] < 100 and ours["per_category"]["c"] == 0.0
