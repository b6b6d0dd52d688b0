"""Localization pictures: which guesses count as right, and the boxes drawn where they belong."""

import numpy as np

from localization.visualize import (
    GT_COLOUR,
    RIGHT_COLOUR,
    WRONG_COLOUR,
    draw_localization,
    image_finder,
    is_right,
    write_plots,
)


def test_a_guess_is_right_with_the_gt_label_and_half_overlap():
    truth = [("n01", (10.0, 10.0, 49.0, 49.0))]
    assert is_right(("n01", (10.0, 10.0, 49.0, 49.0)), truth)
    assert not is_right(("n02", (10.0, 10.0, 49.0, 49.0)), truth)  # right box, wrong label
    assert not is_right(("n01", (40.0, 40.0, 79.0, 79.0)), truth)  # right label, far box


def test_boxes_are_drawn_in_their_colours_at_their_places():
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    truth = [("n01", (10.0, 20.0, 60.0, 70.0))]
    guesses = [("n01", (12.0, 22.0, 58.0, 68.0)), ("n02", (80.0, 30.0, 110.0, 90.0))]
    canvas = draw_localization(image, truth, guesses)
    assert tuple(canvas[45, 10]) == GT_COLOUR  # left edge of the GT box, below its caption
    assert tuple(canvas[45, 12]) == RIGHT_COLOUR  # left edge of the right guess
    assert tuple(canvas[60, 110]) == WRONG_COLOUR  # right edge of the wrong guess
    assert image.sum() == 0  # the input is left alone


def test_write_plots_finds_images_and_skips_missing_ones(tmp_path):
    import cv2

    folder = tmp_path / "val"
    (folder / "n01").mkdir(parents=True)
    cv2.imwrite(str(folder / "n01" / "img_b.JPEG"), np.full((50, 60, 3), 90, dtype=np.uint8))
    truth = {"img_a": [("n01", (1.0, 1.0, 20.0, 20.0))], "img_b": [("n01", (5.0, 5.0, 30.0, 30.0))]}
    written = write_plots(truth, {"img_b": [("n01", (5.0, 5.0, 30.0, 30.0))]}, image_finder(str(folder)),
                          str(tmp_path / "plots"), count=4)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["img_b.jpg"]
    assert cv2.imread(written[0]).shape == (50, 60, 3)


def test_eval_loc_plots_in_scoring_mode(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from classification.data.synthetic_ilsvrc import ensure_synthetic_loc
    from tests.conftest import ROOT
    from tests.helpers import subprocess_env

    root = ensure_synthetic_loc(str(tmp_path / "data"), images_per_class={"train": 1, "val": 1}, sides=(48, 64))
    gt = os.path.join(root, "LOC_val_solution.csv")
    shutil.copy(gt, tmp_path / "perfect.csv")  # the ground truth as predictions: every guess right
    args = [sys.executable, os.path.join(ROOT, "tools", "eval_loc.py"), "--gt", gt, "--pred",
            str(tmp_path / "perfect.csv"), "--synsets", os.path.join(root, "LOC_synset_mapping.txt"),
            "--out", str(tmp_path / "out"), "--plots", str(tmp_path / "plots")]
    missing = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert missing.returncode == 2 and "--plots in scoring mode needs --images" in missing.stderr
    images = os.path.join(root, "ILSVRC", "Data", "CLS-LOC", "val")
    result = subprocess.run(args + ["--images", images], capture_output=True, text=True, cwd=ROOT,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    pictures = sorted(os.listdir(tmp_path / "plots"))
    assert len(pictures) == min(8, len(os.listdir(images))) and f"{len(pictures)} pictures written" in result.stdout
