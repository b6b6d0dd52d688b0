"""The VOC metric against hand-computed cases, and the server's result files."""

import math

import numpy as np
import pytest

from detection.evaluation.coco_eval import DetectionsError
from detection.evaluation.voc_eval import VOC2007_RECALL_POINTS, evaluate_voc, score_voc_test_set, voc_ap

# A curve of 5 detections over 3 objects: TP, FP, TP, FP, TP.
RECALL = np.array([1, 1, 2, 2, 3]) / 3
PRECISION = np.array([1 / 1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])


def test_area_under_the_precision_envelope_by_hand():
    # Envelope 1, 2/3, 2/3, 3/5, 3/5; recall steps of 1/3 at the points 1, 3 and 5.
    assert voc_ap(RECALL, PRECISION, "voc2010") == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)


def test_eleven_point_interpolation_by_hand():
    # t = 0, .1, .2, .3: precision 1 (recall 1/3 reaches .3); t = .4, .5, .6: 2/3; t = .7 ... 1: 3/5.
    assert voc_ap(RECALL, PRECISION, "voc2007") == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11)


def test_eleven_points_are_matlabs_0_to_1_by_a_tenth():
    """VOCevaldet's ``for t=0:0.1:1``: MATLAB counts the second half down from 1, so 0.6 and 0.7 are exact,
    while the fourth point is 0.30000000000000004 as k * 0.1 gives it (MathWorks' description of colon)."""
    assert VOC2007_RECALL_POINTS.tolist() == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # Recall exactly 0.3 then 0.6 (3 then 6 of 10 objects): 0.3 is below the fourth point, 0.6 reaches the
    # seventh. np.arange(11) * 0.1 (py-faster-rcnn) would give (3 * 1 + 3 * 0.5) / 11.
    recall, precision = np.array([0.3, 0.6]), np.array([1.0, 0.5])
    assert voc_ap(recall, precision, "voc2007") == pytest.approx((3 * 1 + 4 * 0.5) / 11)
    # 7 of 10 reaches the eighth point as well.
    assert voc_ap(np.array([0.7]), np.array([0.5]), "voc2007") == pytest.approx(8 * 0.5 / 11)


def gt_dataset():
    """Image 1: an object A and a difficult one D of class 1; image 2: no object; image 3: an object B
    of class 1; class 2 has no object. Boxes in COCO [x, y, w, h] of 0-based pixel corners."""
    return {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "difficult": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 30, 30], "difficult": 1},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 9, 9], "difficult": 0},
        ],
    }


def detection(image_id, bbox, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


DETECTIONS = [
    detection(1, [10, 10, 40, 40], 0.9),    # A: true positive
    detection(1, [11, 10, 40, 40], 0.8),    # A again: a duplicate, false positive
    detection(1, [100, 100, 30, 30], 0.7),  # the difficult object: neither
    detection(2, [5, 5, 20, 20], 0.6),      # an image without objects: false positive
    # B, pixels 0..9 x 0..9 (100 with the devkit's +1); this box holds 0..9 x 0..4: 50 of them, IoU exactly
    # 0.5 with the +1 convention (36 / 81 without it), and 0.5 counts (>=): a true positive.
    detection(3, [0, 0, 9, 4], 0.5),
]
# Cumulated: tp 1 1 1 1 2, fp 0 1 1 2 2 over 2 objects -> recall .5 .5 .5 .5 1, precision 1 .5 .5 1/3 .5.


@pytest.mark.filterwarnings("ignore:.*AP is undefined")
def test_difficult_duplicate_empty_image_and_the_pixel_convention_by_hand():
    metrics = evaluate_voc(gt_dataset(), DETECTIONS, "voc2010")
    # Envelope 1 then .5: recall 0 -> .5 at precision 1, .5 -> 1 at .5.
    assert metrics["per_category"]["cat"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 0.5))
    eleven = evaluate_voc(gt_dataset(), DETECTIONS, "voc2007")
    # t = 0 ... .5 (6 points) at precision 1, t = .6 ... 1 (5 points) at .5.
    assert eleven["per_category"]["cat"] == pytest.approx(100 * (6 * 1 + 5 * 0.5) / 11)
    assert eleven["voc"]["mAP"] == pytest.approx(eleven["per_category"]["cat"])


def test_a_class_without_objects_has_no_ap_and_is_left_out_of_the_mean():
    detections = DETECTIONS + [detection(2, [0, 0, 10, 10], 0.9, category_id=2)]
    with pytest.warns(UserWarning, match=r"no object of dog .*undefined and left out of the mAP"):
        metrics = evaluate_voc(gt_dataset(), detections, "voc2010")
    assert math.isnan(metrics["per_category"]["dog"])
    assert metrics["voc"]["mAP"] == pytest.approx(75.0)


def test_categories_that_share_a_name_keep_a_row_each():
    """Two categories named cat: one of AP 75 (the hand-computed case above), one of AP 100. Keyed by name,
    the second row overwrote the first and the mAP was that of both (87.5) above one row of 100."""
    gt = gt_dataset()
    gt["categories"][1]["name"] = "cat"
    gt["annotations"].append({"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "difficult": 0})
    metrics = evaluate_voc(gt, DETECTIONS + [detection(2, [0, 0, 20, 20], 0.95, category_id=2)], "voc2010")
    assert metrics["per_category"] == pytest.approx({"cat (id 1)": 75.0, "cat (id 2)": 100.0})
    assert metrics["voc"]["mAP"] == pytest.approx(87.5)


@pytest.mark.filterwarnings("ignore:.*AP is undefined")
def test_only_scored_images_count():
    # Without image 3, B's detection and B itself are out: recall .. 1 of 1 object.
    metrics = evaluate_voc(gt_dataset(), DETECTIONS, "voc2010", image_ids=[1, 2])
    assert metrics["per_category"]["cat"] == pytest.approx(100.0)


def test_detections_of_unknown_images_are_an_error():
    with pytest.raises(DetectionsError, match="1 image ids are not in the ground truth"):
        evaluate_voc(gt_dataset(), [detection(9, [0, 0, 5, 5], 0.5)], "voc2007")


def test_ties_keep_their_order():
    # Two detections of equal score, a miss and a hit: taken in their given order (the devkit's sort is
    # stable), so the two orders give two curves.
    truth = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                             {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10]}]}
    miss_first = [detection(1, [200, 200, 5, 5], 0.5), detection(1, [0, 0, 10, 10], 0.5)]
    hit_first = miss_first[::-1]
    # miss first: recall 0, .5 at precision 0, .5 -> AP .25; hit first: 1 then .5 -> .5.
    assert evaluate_voc(truth, miss_first, "voc2010")["voc"]["mAP"] == pytest.approx(25.0)
    assert evaluate_voc(truth, hit_first, "voc2010")["voc"]["mAP"] == pytest.approx(50.0)


def test_submission_files_without_annotations(tmp_path, capsys):
    truth = {"images": [{"id": 1, "file_name": "VOC2012/JPEGImages/2008_000001.jpg", "voc_id": "2008_000001",
                         "voc_year": "2012", "voc_set": "test", "width": 0, "height": 0}],
             "categories": [{"id": 1, "name": "aeroplane"}, {"id": 2, "name": "bicycle"}]}
    results = [detection(1, [9.0, 19.0, 30.5, 40.0], 0.25), detection(1, [0.0, 0.0, 5.0, 5.0], 0.75)]
    metrics = score_voc_test_set(truth, [1], results, [], "voc2010", str(tmp_path))
    folder = tmp_path / "results" / "VOC2012" / "Main"
    assert metrics["results_dir"] == str(folder) and "voc" not in metrics
    # 1-based corners: x1 + 1, y1 + 1, x1 + w + 1, y1 + h + 1; by decreasing score.
    assert (folder / "comp4_det_test_aeroplane.txt").read_text().splitlines() == [
        "2008_000001 0.750000 1.0 1.0 6.0 6.0", "2008_000001 0.250000 10.0 20.0 40.5 60.0"]
    assert (folder / "comp4_det_test_bicycle.txt").read_text() == ""
    assert "nothing is scored here" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*AP is undefined")
def test_crowd_regions_of_a_coco_json_are_difficult_boxes():
    """A COCO json has no "difficult" key: its crowd regions are the VOC metric's difficult boxes."""
    gt = gt_dataset()
    for ann in gt["annotations"]:
        ann["iscrowd"] = ann.pop("difficult")
    # The hand-computed case above: the detection of the crowd region is neither TP nor FP.
    assert evaluate_voc(gt, DETECTIONS, "voc2010")["per_category"]["cat"] == pytest.approx(75.0)


@pytest.mark.filterwarnings("ignore:.*AP is undefined")
def test_unreadable_images_are_left_out_of_the_voc_score(tmp_path):
    """As in the COCO and DET scores: image 3 (object B) left out, 1 object found first: AP 100 (counting its
    object as missed would give 50)."""
    readable = [d for d in DETECTIONS if d["image_id"] != 3]
    with pytest.warns(UserWarning, match="1 unreadable test images"):
        metrics = score_voc_test_set(gt_dataset(), [1, 2, 3], readable, [(3, "c.jpg")], "voc2010", str(tmp_path))
    assert metrics["per_category"]["cat"] == pytest.approx(100.0)
    assert (metrics["num_images"], metrics["skipped_images"]) == (2, 1)

