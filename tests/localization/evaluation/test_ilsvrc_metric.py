"""The CLS-LOC metric on hand-computed cases: the +1 IoU, the 0.5 edge, ranks, labels, missing images."""

import time

import numpy as np
import pytest

from localization.evaluation.ilsvrc_metric import gt_known_loc_error, iou_inclusive, localization_errors

A = (0, 0, 9, 9)  # 10 x 10 = 100 pixels
HALF_OF_A = (0, 0, 9, 4)  # 10 x 5 = 50 pixels inside A: inclusive IoU exactly 0.5
BELOW_HALF = (0, 0, 6, 6)  # 7 x 7 = 49 pixels inside A: inclusive IoU 0.49
FAR = (200, 200, 260, 260)


def exclusive_iou(a, b):
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_iou_uses_inclusive_pixels():
    # Inclusive IoU exactly 0.5 where the exclusive one is 36 / 81.
    assert iou_inclusive(A, HALF_OF_A) == 0.5
    assert exclusive_iou(A, HALF_OF_A) == pytest.approx(36 / 81)
    # And the other way round: exclusive IoU exactly 0.5 where the inclusive one is 12 / 20.
    shifted_a, shifted_b = (0, 0, 3, 3), (1, 0, 4, 3)
    assert exclusive_iou(shifted_a, shifted_b) == 0.5
    assert iou_inclusive(shifted_a, shifted_b) == pytest.approx(12 / 20)
    assert iou_inclusive(A, BELOW_HALF) == pytest.approx(0.49)
    # Boxes sharing one column overlap by one pixel column; the next column over does not overlap.
    assert iou_inclusive((0, 0, 4, 4), (4, 0, 8, 4)) == pytest.approx(5 / 45)
    assert iou_inclusive((0, 0, 4, 4), (5, 0, 9, 4)) == 0.0
    assert iou_inclusive(A, A) == 1.0


def errors(gt, predictions, **kwargs):
    return localization_errors(gt, predictions, **kwargs)


def test_iou_of_exactly_half_is_right_and_just_below_is_wrong():
    gt = {"img": [("n1", A)]}
    assert errors(gt, {"img": [("n1", HALF_OF_A)]}).top1_loc_err == 0.0
    result = errors(gt, {"img": [("n1", BELOW_HALF)]})
    assert result.top1_loc_err == 100.0 and result.top5_loc_err == 100.0
    assert result.top1_cls_err == 0.0


def test_any_gt_box_of_the_label_will_do():
    second = (50, 50, 69, 69)
    gt = {"img": [("n1", A), ("n1", second)]}
    assert errors(gt, {"img": [("n1", second)]}).top1_loc_err == 0.0
    assert errors(gt, {"img": [("n1", (20, 20, 29, 29))]}).top1_loc_err == 100.0
    # A box between the two GT boxes matches neither well enough.
    assert errors(gt, {"img": [("n1", (0, 0, 69, 69))]}).top1_loc_err == 100.0


def test_right_box_with_the_wrong_label_is_wrong():
    gt = {"img": [("n1", A)]}
    result = errors(gt, {"img": [("n2", A)]})
    assert result.loc_err_by_guesses == [100.0] * 5 and result.cls_err_by_guesses == [100.0] * 5
    # Right label second, but with a far box: the label counts for classification only.
    result = errors(gt, {"img": [("n2", A), ("n1", FAR)]})
    assert result.loc_err_by_guesses == [100.0] * 5
    assert result.cls_err_by_guesses == [100.0, 0.0, 0.0, 0.0, 0.0]


def test_each_guess_is_judged_with_its_own_box():
    gt = {"img": [("n1", A)]}
    result = errors(gt, {"img": [("n1", FAR), ("n1", A)]})
    assert result.loc_err_by_guesses == [100.0, 0.0, 0.0, 0.0, 0.0]
    assert result.top1_cls_err == 0.0


def test_several_gt_labels_score_the_mean_over_labels():
    gt = {"img": [("n1", A), ("n2", (100, 100, 149, 149))]}
    # n1 right at rank 1; n2 guessed at rank 3 with a far box; n3 is no GT label.
    result = errors(gt, {"img": [("n1", A), ("n3", A), ("n2", FAR)]})
    assert result.loc_err_by_guesses == [50.0] * 5
    assert result.cls_err_by_guesses == [50.0, 50.0, 0.0, 0.0, 0.0]
    result = errors(gt, {"img": [("n2", (100, 100, 149, 149)), ("n1", A)]})
    assert result.loc_err_by_guesses == [50.0, 0.0, 0.0, 0.0, 0.0]


def test_error_against_number_of_guesses():
    wrong = ("n9", A)
    gt = {f"i{k}": [("n1", A)] for k in range(1, 6)}
    predictions = {
        "i1": [("n1", A)],  # right at 1
        "i2": [wrong, ("n1", A)],  # right at 2
        "i3": [("n1", FAR), wrong, ("n1", HALF_OF_A)],  # label at 1, box at 3
        "i4": [wrong, wrong, wrong, wrong, ("n1", A)],  # right at 5
        "i5": [wrong, ("n1", FAR)],  # label at 2, never a box
    }
    result = errors(gt, predictions)
    assert result.loc_err_by_guesses == pytest.approx([80.0, 60.0, 40.0, 40.0, 20.0])
    assert result.cls_err_by_guesses == pytest.approx([60.0, 20.0, 20.0, 20.0, 0.0])
    assert (result.top1_loc_err, result.top5_loc_err) == pytest.approx((80.0, 20.0))
    assert (result.top1_cls_err, result.top5_cls_err) == pytest.approx((60.0, 0.0))


def test_guesses_past_five_are_ignored():
    gt = {"img": [("n1", A)]}
    predictions = {"img": [("n9", A)] * 5 + [("n1", A)]}
    result = errors(gt, predictions)
    assert result.top5_loc_err == 100.0 and result.top5_cls_err == 100.0
    assert errors(gt, predictions, max_guesses=6).loc_err_by_guesses[-1] == 0.0


def test_fewer_than_five_guesses():
    gt = {"a": [("n1", A)], "b": [("n2", A)]}
    result = errors(gt, {"a": [("n1", A)], "b": [("n1", A), ("n2", BELOW_HALF)]})
    assert result.loc_err_by_guesses == [50.0] * 5
    assert result.cls_err_by_guesses == [50.0, 0.0, 0.0, 0.0, 0.0]
    # No guess at all, or only empty devkit slots (label 0), is no prediction: counted and reported.
    for no_guess in ([], [("", (0, 0, 0, 0))]):
        with pytest.warns(UserWarning, match=r"1 of 2 ground-truth images have no prediction \(e.g. a\)"):
            result = errors(gt, {"a": no_guess, "b": [("n2", A)]})
        assert result.loc_err_by_guesses == [50.0] * 5 and result.num_missing == 1


def test_missing_image_counts_as_wrong_with_one_warning():
    gt = {"a": [("n1", A)], "b": [("n1", A)], "c": [("n1", A)], "d": [("n1", A)]}
    expected = r"2 of 4 ground-truth images have no prediction \(e.g. c\); they count as wrong"
    with pytest.warns(UserWarning, match=expected) as record:
        result = errors(gt, {"a": [("n1", A)], "b": [("n1", A)]})
    assert len(record) == 1
    assert result.top5_loc_err == 50.0 and result.top5_cls_err == 50.0 and result.num_missing == 2


def test_predicted_images_outside_the_ground_truth_are_ignored():
    with pytest.warns(UserWarning, match="1 predicted images are not in the ground truth"):
        result = errors({"a": [("n1", A)]}, {"a": [("n1", A)], "zz": [("n1", A)]})
    assert result.top1_loc_err == 0.0 and result.num_images == 1


def test_blacklist_leaves_images_out_of_loc_error_only():
    gt = {"a": [("n1", A)], "b": [("n1", A)], "c": [("n1", A)]}
    predictions = {"a": [("n1", A)], "b": [("n1", FAR)], "c": [("n2", A)]}
    result = errors(gt, predictions)
    assert result.top1_loc_err == pytest.approx(200 / 3) and result.top1_cls_err == pytest.approx(100 / 3)
    result = errors(gt, predictions, blacklist={"c"})
    # LOC: (0 + 1) / (3 - 1); CLS: the devkit does not apply the blacklist, (0 + 0 + 1) / 3.
    assert result.top1_loc_err == 50.0 and result.top1_cls_err == pytest.approx(100 / 3)
    assert result.num_blacklisted == 1
    assert errors(gt, predictions, blacklist={"b", "c", "unknown"}).top1_loc_err == 0.0


def test_gt_known_error_judges_the_box_of_the_gt_class():
    gt = {"a": [("n1", A)], "b": [("n1", A)], "c": [("n2", A)], "d": [("n2", A), ("n2", FAR)]}
    boxes = {"a": HALF_OF_A, "b": BELOW_HALF, "c": FAR, "d": FAR}  # right, wrong, right... see below
    # a: IoU 0.5 right; b: 0.49 wrong; c: FAR vs A wrong; d: FAR is its second GT box, right.
    assert gt_known_loc_error(gt, boxes) == 50.0
    # Per-class boxes: only the GT class's box counts.
    per_class = {"a": {"n1": A, "n2": FAR}, "b": {"n2": A}, "c": {"n2": A}, "d": {"n1": FAR, "n2": A}}
    assert gt_known_loc_error(gt, per_class) == 25.0
    with pytest.warns(UserWarning, match="1 of 4"):
        assert gt_known_loc_error(gt, {"a": A, "c": A, "d": A}) == 25.0
    assert gt_known_loc_error(gt, boxes, blacklist={"b"}) == pytest.approx(100 / 3)


def test_gt_known_error_with_several_gt_labels_is_the_mean():
    gt = {"img": [("n1", A), ("n2", (100, 100, 149, 149))]}
    assert gt_known_loc_error(gt, {"img": {"n1": A, "n2": FAR}}) == 50.0
    assert gt_known_loc_error(gt, {"img": A}) == 50.0  # one box judged against each GT label


def reference_errors(gt, predictions, max_guesses=5):
    """The devkit loops written out plainly: per image, per GT label, per guess."""
    loc, cls = np.zeros(max_guesses), np.zeros(max_guesses)
    for image_id, objects in gt.items():
        labels = list(dict.fromkeys(w for w, _ in objects))
        guesses = predictions.get(image_id, [])[:max_guesses]
        for k in range(1, max_guesses + 1):
            for label in labels:
                label_found = any(w == label for w, _ in guesses[:k])
                gt_boxes = [g for gw, g in objects if gw == label]
                box_found = any(w == label and any(iou_inclusive(box, g) >= 0.5 for g in gt_boxes)
                                for w, box in guesses[:k])
                cls[k - 1] += (not label_found) / len(labels)
                loc[k - 1] += (not box_found) / len(labels)
    return list(100 * loc / len(gt)), list(100 * cls / len(gt))


def random_case(rng, num_images, num_classes=6):
    def box():
        x, y = rng.integers(0, 80, 2)
        return (int(x), int(y), int(x + rng.integers(5, 60)), int(y + rng.integers(5, 60)))

    wnids = [f"n{i}" for i in range(num_classes)]
    gt, predictions = {}, {}
    for i in range(num_images):
        labels = rng.choice(wnids, size=1 + (rng.random() < 0.2), replace=False)
        gt[f"im{i:05d}"] = [(str(w), box()) for w in labels for _ in range(rng.integers(1, 4))]
        guesses = []
        for _ in range(rng.integers(0, 8)):
            wnid, gt_box = gt[f"im{i:05d}"][rng.integers(len(gt[f"im{i:05d}"]))]
            jitter = rng.integers(-6, 7, 4)
            guesses.append((str(rng.choice(wnids)) if rng.random() < 0.4 else wnid,
                            tuple(int(v) for v in np.asarray(gt_box) + jitter)))
        predictions[f"im{i:05d}"] = guesses
    return gt, predictions


def test_vectorised_metric_matches_plain_loops_on_random_cases():
    gt, predictions = random_case(np.random.default_rng(0), 400)
    result = errors(gt, predictions)
    loc, cls = reference_errors(gt, predictions)
    assert result.loc_err_by_guesses == pytest.approx(loc)
    assert result.cls_err_by_guesses == pytest.approx(cls)
    assert 0 < result.top5_loc_err < result.top1_loc_err < 100  # the random case exercises every rank


def test_fifty_thousand_images_score_in_seconds():
    rng = np.random.default_rng(1)
    boxes = rng.integers(0, 200, (50000, 2))
    gt = {f"ILSVRC2012_val_{i:08d}": [(f"n{i % 1000:08d}", (x, y, x + 99, y + 99))]
          for i, (x, y) in enumerate(boxes)}
    predictions = {key: [(f"n{(i + r) % 1000:08d}", objects[0][1]) for r in range(5)]
                   for i, (key, objects) in enumerate(gt.items())}
    start = time.perf_counter()
    result = errors(gt, predictions)
    assert time.perf_counter() - start < 15
    assert result.top1_loc_err == 0.0 and result.num_images == 50000
