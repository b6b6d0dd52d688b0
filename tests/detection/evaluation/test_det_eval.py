"""The ImageNet DET metric on hand-computed cases: the size-dependent threshold, duplicates, an image
without objects, the AP by hand, and where it parts from the VOC metric on the same detections."""

import logging
import math

import numpy as np
import pytest

from detection.evaluation.det_eval import det_thresholds, evaluate_det, score_det_test_set
from detection.evaluation.voc_eval import evaluate_voc


def corners_to_bbox(x1, y1, x2, y2):
    """Inclusive pixel corners -> the COCO [x, y, w, h] of the readers (x + w is the last column)."""
    return [x1, y1, x2 - x1, y2 - y1]


def dataset(objects, num_images=3, classes=("n00000001",)):
    """objects: (image id, category id, inclusive corners)."""
    return {"images": [{"id": i} for i in range(1, num_images + 1)],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
            "annotations": [{"id": k + 1, "image_id": image, "category_id": category,
                             "bbox": corners_to_bbox(*box), "iscrowd": 0}
                            for k, (image, category, box) in enumerate(objects)]}


def detection(image, score, box, category=1):
    return {"image_id": image, "category_id": category, "score": score, "bbox": corners_to_bbox(*box)}


def det_ap(gt, results):
    return evaluate_det(gt, results)["det"]["mAP"]


def test_thresholds_by_hand():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 99, 99], [5, 5, 24, 34], [0, 0, 9, 19]], dtype=float)
    # 10x10: 100 / 400; 100x100: 10000 / 12100 > 0.5; 20x30: 600 / 1200; 10x20: 200 / 600.
    np.testing.assert_allclose(det_thresholds(boxes), [0.25, 0.5, 0.5, 1 / 3])


def test_a_small_object_is_found_below_iou_half_and_a_large_one_is_not():
    # IoU 40 / 100 = 0.4: above the 10x10 object's 0.25, below the 100x100 object's 0.5.
    small = dataset([(1, 1, (0, 0, 9, 9))])
    assert det_ap(small, [detection(1, 0.9, (0, 0, 9, 3))]) == pytest.approx(100.0)
    assert evaluate_voc(small, [detection(1, 0.9, (0, 0, 9, 3))], "voc2010")["voc"]["mAP"] == 0.0
    large = dataset([(1, 1, (0, 0, 99, 99))])
    assert det_ap(large, [detection(1, 0.9, (0, 0, 99, 39))]) == 0.0


def test_a_duplicate_is_a_false_positive():
    gt = dataset([(1, 1, (0, 0, 99, 99)), (2, 1, (0, 0, 49, 49))])
    # TP, then the same box again (FP), the second object never found: recall 1/2, 1/2, precision 1, 1/2.
    results = [detection(1, 0.9, (0, 0, 99, 99)), detection(1, 0.8, (0, 0, 99, 99))]
    assert det_ap(gt, results) == pytest.approx(50.0)


def test_a_second_detection_finds_another_object_it_overlaps_enough():
    # Objects A and B; the second detection overlaps A (found) at 8000/12000 and B at 7000/13000 >= 0.5.
    gt = dataset([(1, 1, (0, 0, 99, 99)), (1, 1, (50, 0, 149, 99))])
    results = [detection(1, 0.9, (0, 0, 99, 99)), detection(1, 0.8, (20, 0, 119, 99))]
    assert det_ap(gt, results) == pytest.approx(100.0)
    # VOC gives it to A, its best overlap, already taken: a duplicate. Recall 1/2, 1/2 -> AP 0.5.
    assert evaluate_voc(gt, results, "voc2010")["voc"]["mAP"] == pytest.approx(50.0)


def test_ap_by_hand_with_an_image_without_objects():
    # Three objects; image 3 has none. By score: TP, FP (misplaced), TP, FP (image 3), the third object missed.
    gt = dataset([(1, 1, (0, 0, 99, 99)), (2, 1, (0, 0, 59, 59)), (2, 1, (100, 100, 159, 159))])
    results = [detection(1, 0.9, (0, 0, 99, 99)), detection(1, 0.8, (300, 300, 399, 399)),
               detection(2, 0.7, (0, 0, 59, 59)), detection(3, 0.6, (0, 0, 59, 59))]
    # recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2; envelope 1, 2/3, 2/3, 1/2:
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    assert det_ap(gt, results) == pytest.approx(500 / 9)


def test_ties_are_ordered_by_image_then_given_order():
    gt = dataset([(1, 1, (0, 0, 99, 99)), (2, 1, (0, 0, 99, 99))])
    # Equal scores: image 1's FP comes before image 2's TP whatever the list order:
    # recall 0, 1/2, 1; precision 0, 1/2, 2/3 -> envelope 2/3 on both steps: AP 2/3.
    results = [detection(2, 0.5, (0, 0, 99, 99)), detection(1, 0.5, (300, 300, 399, 399)),
               detection(1, 0.4, (0, 0, 99, 99))]
    assert det_ap(gt, results) == pytest.approx(200 / 3)


def test_mean_over_classes_leaves_a_class_without_objects_out_with_a_warning():
    gt = dataset([(1, 1, (0, 0, 99, 99))], classes=("n00000001", "n00000002"))
    results = [detection(1, 0.9, (0, 0, 99, 99)), detection(1, 0.8, (0, 0, 99, 99), category=2)]
    with pytest.warns(UserWarning, match="no object of n00000002"):
        metrics = evaluate_det(gt, results)
    assert metrics["det"]["mAP"] == pytest.approx(100.0) and math.isnan(metrics["per_category"]["n00000002"])


def test_unreadable_images_are_left_out_and_counted():
    gt = dataset([(1, 1, (0, 0, 99, 99)), (2, 1, (0, 0, 99, 99))])
    with pytest.warns(UserWarning, match="1 unreadable test images"):
        metrics = score_det_test_set(gt, [1, 2], [detection(1, 0.9, (0, 0, 99, 99))], [(2, "b.JPEG")], "unused")
    assert metrics["det"]["mAP"] == pytest.approx(100.0)
    assert (metrics["num_images"], metrics["skipped_images"]) == (1, 1)


def test_a_test_set_without_annotations_is_not_scored_and_gets_the_devkit_results_file(tmp_path, caplog):
    gt = dataset([], classes=("n00000001", "n00000002"))
    del gt["annotations"]
    for image, index in zip(gt["images"], (7, 3, 5)):
        image["det_index"] = index
    results = [detection(1, 0.25, (0, 0, 9, 9)), detection(2, 0.5, (1.5, 2, 30, 40), category=2),
               detection(1, 0.75, (4, 5, 6, 7), category=2)]
    # Classes read from the annotations, sorted, are not map_det.txt's numbering: no file for the server.
    with caplog.at_level(logging.WARNING, logger="detection.evaluation.det_eval"):
        assert "results_file" not in score_det_test_set(gt, [1, 2, 3], results, [], str(tmp_path))
    assert "no results file for the server: its classes are the annotations' synsets sorted" in caplog.text
    assert not (tmp_path / "det_results.txt").exists()
    for category in gt["categories"]:
        category["det_id"] = category["id"]  # read from map_det.txt
    metrics = score_det_test_set(gt, [1, 2, 3], results, [], str(tmp_path))
    assert metrics == {"num_images": 3, "skipped_images": 0, "results_file": str(tmp_path / "det_results.txt")}
    # By image index, then decreasing score: <image index> <class id> <score> <xmin> <ymin> <xmax> <ymax>.
    assert (tmp_path / "det_results.txt").read_text().splitlines() == [
        "3 2 0.500000 1.50 2.00 30.00 40.00", "7 2 0.750000 4.00 5.00 6.00 7.00", "7 1 0.250000 0.00 0.00 9.00 9.00"]
    del gt["images"][0]["det_index"]  # images of train lists have no index: no file
    (tmp_path / "det_results.txt").unlink()
    assert "results_file" not in score_det_test_set(gt, [1, 2, 3], results, [], str(tmp_path))
    assert not (tmp_path / "det_results.txt").exists()


def test_a_detection_takes_the_unfound_object_it_overlaps_most():
    """eval_detection.m takes the unfound object of the highest IoU above its threshold (ov >= thr(k) &&
    ov > ovmax), leaving the other for a later detection. A = 0..99, B = 20..119 (x): D1 overlaps B at
    9500/10500 and A at 8500/11500 (both >= 0.5) and takes B; D2 overlaps A at 7000/13000 and finds it.
    Taking A first would leave D2 a false positive (AP 50)."""
    gt = dataset([(1, 1, (0, 0, 99, 99)), (1, 1, (20, 0, 119, 99))])
    results = [detection(1, 0.9, (15, 0, 114, 99)), detection(1, 0.8, (-30, 0, 69, 99))]
    assert det_ap(gt, results) == pytest.approx(100.0)

