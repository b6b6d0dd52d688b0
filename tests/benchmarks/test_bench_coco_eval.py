"""benchmarks/bench_coco_eval.py: its COCO-like case and its verdict on whether the backends agree."""

import json
import sys

import numpy as np
import pytest

from detection.evaluation.coco_eval import STAT_NAMES, evaluate_detections
from tests.helpers import load_benchmark_script


def test_the_case_has_cocos_category_ids_boxes_inside_images_and_100_detections_each():
    bench = load_benchmark_script("bench_coco_eval")
    assert len(bench.COCO_CATEGORY_IDS) == 80 and max(bench.COCO_CATEGORY_IDS) == 90
    gt = bench.coco_val_like(50, seed=3)
    assert gt == bench.coco_val_like(50, seed=3)  # a fixed seed gives the same case
    sizes = {image["id"]: (image["width"], image["height"]) for image in gt["images"]}
    boxes = np.array([a["bbox"] for a in gt["annotations"]])
    limits = np.array([sizes[a["image_id"]] for a in gt["annotations"]])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > 0).all()
    assert (boxes[:, :2] + boxes[:, 2:] <= limits + 0.01).all()  # rounded to 2 decimals
    assert 5 < len(gt["annotations"]) / len(gt["images"]) < 10
    results = bench.perturbed_detections(gt, per_image=100, seed=4)
    per_image = np.bincount([r["image_id"] for r in results], minlength=51)[1:]
    assert (per_image == 100).all()


def test_a_difference_between_backends_is_found():
    bench = load_benchmark_script("bench_coco_eval")
    stats = dict.fromkeys(STAT_NAMES, 30.0)
    runs = {"pycocotools": {"stats": stats}, "faster_coco_eval": {"stats": {**stats, "ARl": 30.5}}}
    assert bench.largest_difference(runs) == pytest.approx(0.5)
    assert bench.largest_difference({"pycocotools": {"stats": stats}}) == 0.0


def test_a_small_run_writes_both_backends_numbers(tmp_path, monkeypatch):
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed: pip install '.[fast-eval]'")
    bench = load_benchmark_script("bench_coco_eval")
    out = tmp_path / "coco_eval.json"
    monkeypatch.setattr(sys, "argv", ["bench_coco_eval.py", "--images", "10", "--out", str(out)])
    assert bench.main() == 0
    written = json.loads(out.read_text())
    assert set(written["runs"]) == {"pycocotools", "faster_coco_eval"} and written["agree"]
    gt = bench.coco_val_like(10)
    reference = evaluate_detections(gt, bench.perturbed_detections(gt), "pycocotools")["bbox"]
    assert written["runs"]["faster_coco_eval"]["stats"] == pytest.approx(reference, abs=1e-9)
    assert 0 < reference["AP"] < 100
