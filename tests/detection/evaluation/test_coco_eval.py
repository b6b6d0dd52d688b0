"""Scoring against pycocotools itself, the faster backend, and bad detection files."""

import contextlib
import copy
import io
import json
import logging
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.config import DetectionConfig
from detection.evaluation.coco_eval import (
    STAT_NAMES,
    DetectionsError,
    evaluate_detections,
    format_results,
    load_results_file,
    metrics_for_json,
    score_test_set,
)
from resnet_engine.errors import UserError
from resnet_engine.extras import installed
from tests.helpers import load_benchmark_script


def fixture_dataset(seed=0):
    """GT with crowd regions, a category without any detection and one without any GT."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    categories = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 11, "name": "c"}, {"id": 12, "name": "d"}]
    for image_id in range(1, 13):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 480, "width": 640})
        for _ in range(rng.integers(1, 6)):
            w, h = rng.uniform(8, 200, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category = int(rng.choice([3, 7, 11]))
            crowd = int(rng.random() < 0.15)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
            if category == 11:
                continue  # category "c" gets no detections at all
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
                results.append({"image_id": image_id, "category_id": category,
                                "bbox": [float(v) for v in np.array([x, y, w, h]) + jitter],
                                "score": float(rng.uniform(0.05, 1))})
        results.append({"image_id": image_id, "category_id": 12, "bbox": [1, 1, 30, 30], "score": 0.3})
    return {"images": images, "annotations": annotations, "categories": categories}, results


def percent(stats) -> list[float]:
    """pycocotools' stats in percent, its -1 (no object to find) as NaN, as the toolkit reports them."""
    return [float(s) * 100 if s > -1 else math.nan for s in stats]


def pycocotools_stats(gt, results, category_ids=None, image_ids=None):
    """pycocotools' evaluator, over every category or only ``category_ids``, every image or only ``image_ids``."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        if category_ids is not None:
            evaluator.params.catIds = category_ids
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_scores_equal_pycocotools():
    gt, results = fixture_dataset()
    reference = pycocotools_stats(gt, results)
    ours = evaluate_detections(gt, results)
    assert [ours["bbox"][k] for k in STAT_NAMES] == pytest.approx(percent(reference.stats), abs=1e-9, nan_ok=True)
    assert np.isnan(ours["per_category"]["d"])  # no GT: undefined
    assert ours["per_category"]["c"] == 0.0  # GT but no detection
    # Each class's AP is pycocotools' AP of an evaluation of that class alone.
    for name, category_id in (("a", 3), ("b", 7)):
        alone = pycocotools_stats(gt, results, [category_id]).stats[0] * 100
        assert 5 < alone < 95 and ours["per_category"][name] == pytest.approx(alone, abs=1e-9), name


def test_faster_backend_gives_identical_numbers():
    gt, results = fixture_dataset(seed=1)
    slow = evaluate_detections(gt, results, "pycocotools")
    fast = evaluate_detections(gt, results, "faster_coco_eval")
    assert [fast["bbox"][k] for k in STAT_NAMES] == pytest.approx([slow["bbox"][k] for k in STAT_NAMES], abs=1e-9,
                                                                       nan_ok=True)
    assert np.allclose(fast["precision"], slow["precision"], atol=1e-12)


def test_the_faster_backend_missing_names_the_extra_that_installs_it(monkeypatch):
    gt, results = fixture_dataset()
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # an import of it now fails
    with pytest.raises(UserError) as caught:
        evaluate_detections(gt, results, "faster_coco_eval")
    assert str(caught.value) == ("test.eval_backend=faster_coco_eval needs faster-coco-eval, which is not installed: "
                                 "pip install 'resnet-detection[fast-eval]'")


def test_unknown_image_ids_are_a_clear_error():
    gt, results = fixture_dataset()
    results.append({"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5})
    with pytest.raises(DetectionsError, match=r"1 image ids are not in the ground truth \(e.g. \[999\]\)"):
        evaluate_detections(gt, results)


def objects_of_some_sizes():
    """Image 1: a medium and a large "x"; image 2: a small "y" and a crowd "z". Categories "z" (crowd
    only) and "w" (nothing) have no object to find."""
    annotations = [(1, 1, [10, 10, 40, 40], 0), (1, 1, [100, 100, 120, 120], 0), (2, 2, [5, 5, 10, 10], 0),
                   (2, 3, [50, 50, 150, 150], 1)]
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 300, "height": 300} for i in (1, 2)],
            "categories": [{"id": i, "name": name} for i, name in ((1, "x"), (2, "y"), (3, "z"), (4, "w"))],
            "annotations": [{"id": n, "image_id": image_id, "category_id": category, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": crowd}
                            for n, (image_id, category, box, crowd) in enumerate(annotations, start=1)]}


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
@pytest.mark.parametrize("image_ids", [None, [1]], ids=["all-images", "image-1"])
def test_no_detections_score_as_detections_that_find_nothing(backend, image_ids):
    """What pycocotools gives with one detection that cannot match (a "w", which has no ground truth): 0
    where there are objects to find, undefined (NaN) where there are none: the small ones when only image 1
    is scored, and the categories without a (non-crowd) object in the scored images."""
    if backend == "faster_coco_eval" and not installed("faster_coco_eval"):
        pytest.skip("faster-coco-eval is not installed")
    gt = objects_of_some_sizes()
    unmatchable = [{"image_id": 1, "category_id": 4, "bbox": [0, 0, 50, 50], "score": 0.5}]
    metrics = evaluate_detections(gt, [], backend, image_ids=image_ids)
    reference = pycocotools_stats(gt, unmatchable, image_ids=image_ids)
    assert [metrics["bbox"][k] for k in STAT_NAMES] == pytest.approx(percent(reference.stats), nan_ok=True)
    no_small = image_ids == [1]
    by_hand = [math.nan if no_small and name in ("APs", "ARs") else 0.0 for name in STAT_NAMES]
    assert [metrics["bbox"][k] for k in STAT_NAMES] == pytest.approx(by_hand, nan_ok=True)
    for name, category_id in (("x", 1), ("y", 2), ("z", 3), ("w", 4)):
        alone = percent(pycocotools_stats(gt, unmatchable, [category_id], image_ids).stats)[0]
        assert metrics["per_category"][name] == pytest.approx(alone, nan_ok=True), name
    assert metrics["per_category"] == pytest.approx({"x": 0.0, "y": math.nan if no_small else 0.0, "z": math.nan,
                                                     "w": math.nan}, nan_ok=True)
    assert "x  0.00" in format_results(metrics) and "w  n/a" in format_results(metrics)


def test_ground_truth_without_objects_is_an_error_not_minus_100():
    gt, results = fixture_dataset()
    crowd_only = {**gt, "annotations": [{**a, "iscrowd": 1} for a in gt["annotations"]]}
    for empty in ({**gt, "annotations": []}, crowd_only):
        with pytest.raises(DetectionsError, match="no object box in the ground truth of the 12 scored images"):
            evaluate_detections(empty, results)
    on_image_1 = [a for a in gt["annotations"] if a["image_id"] == 1]
    with pytest.raises(DetectionsError, match="of the 3 scored images"):
        evaluate_detections({**gt, "annotations": on_image_1}, results, image_ids=[2, 3, 4])


def test_scoring_mode_command_line(tmp_path, repo_root):
    gt, results = fixture_dataset()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "det.json").write_text(json.dumps(results))
    done = subprocess.run([sys.executable, f"{repo_root}/tools/eval_det.py", "--gt", str(tmp_path / "gt.json"),
                           "--det", str(tmp_path / "det.json"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in done.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["bbox"]) == set(STAT_NAMES)
    assert metrics["bbox"]["AP"] == pytest.approx(pycocotools_stats(gt, results).stats[0] * 100, abs=1e-3)
    assert metrics["backend"] == ("faster_coco_eval" if installed("faster_coco_eval") else "pycocotools")  # auto
    results.append({"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5})
    (tmp_path / "det.json").write_text(json.dumps(results))
    failed = subprocess.run([sys.executable, f"{repo_root}/tools/eval_det.py", "--gt", str(tmp_path / "gt.json"),
                             "--det", str(tmp_path / "det.json"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.strip().startswith("error:") and "999" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    # A model's settings have nothing to change in scoring mode: given, they would be ignored without a word.
    ignored = subprocess.run([sys.executable, f"{repo_root}/tools/eval_det.py", "--gt", str(tmp_path / "gt.json"),
                              "--det", str(tmp_path / "det.json"), "--weights", "model.pth", "test.max_images=5"],
                             capture_output=True, text=True)
    assert ignored.returncode == 2
    assert ignored.stderr.strip() == (
        "error: scoring mode (--gt and --det) scores a results file and runs no model: drop --weights, key=value, "
        "or drop --gt and --det to run the model (python eval_det.py --help lists the options)")


@pytest.mark.parametrize("change, message", [
    ({"score": float("nan")}, "detection #5 has score nan: give a finite number"),
    ({"score": "0.9"}, "detection #5 has score '0.9': give a finite number"),
    ({"score": float("inf")}, "detection #5 has score inf"),
    ({"score": True}, "detection #5 has score True"),
    ({"bbox": [1.0, float("nan"), 3.0, 4.0]}, r"detection #5 has bbox \[1.0, nan, 3.0, 4.0\]: give 4 finite numbers"),
    ({"bbox": [1, 2, 3]}, r"detection #5 has bbox \[1, 2, 3\]: give 4 finite numbers \[x, y, width, height\]"),
    ({"bbox": ["1", 2, 3, 4]}, r"detection #5 has bbox \['1', 2, 3, 4\]"),
    ({"bbox": [10, 10, 5, -2]}, r"detection #5 has bbox \[10, 10, 5, -2\], of negative width or height: give \[x, "
                                r"y, width, height\] \(corners \[x1, y1, x2, y2\] are another format\)"),
])
def test_detections_file_with_a_bad_value_names_the_detection(tmp_path, change, message):
    """pycocotools ranks NaN scores and matches NaN boxes without a word, and the AP is wrong."""
    _, results = fixture_dataset()
    results[5].update(change)
    path = tmp_path / "det.json"
    path.write_text(json.dumps(results))  # json writes NaN and Infinity, as Python's json reads them
    with pytest.raises(DetectionsError, match=f"^{path}: {message}"):
        load_results_file(str(path))


def test_scoring_mode_refuses_a_nan_score_in_one_line(tmp_path):
    """What eval_det prints after "error: " (test_scoring_mode_command_line runs the command line)."""
    from detection.evaluation.evaluator import score_files
    from resnet_engine.errors import is_user_error

    gt, results = fixture_dataset()
    results[12]["score"] = float("nan")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "det.json").write_text(json.dumps(results))
    with pytest.raises(DetectionsError) as caught:
        score_files(str(tmp_path / "gt.json"), str(tmp_path / "det.json"), str(tmp_path / "out"))
    assert is_user_error(caught.value)
    assert str(caught.value) == (f"{tmp_path / 'det.json'}: detection #12 has score nan: give a finite number "
                                 "(higher is more confident)")
    assert not (tmp_path / "out" / "metrics.json").exists()


def one_object_per_image(tmp_path, images=6):
    """``images`` images with an object each, one with a crowd region only, one without anything."""
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(1, images + 3)],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
                           "iscrowd": int(i == images + 1)} for i in range(1, images + 2)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return gt


def score_with_warnings(tmp_path, results) -> list[str]:
    from detection.evaluation.evaluator import score_files

    (tmp_path / "det.json").write_text(json.dumps(results))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score_files(str(tmp_path / "gt.json"), str(tmp_path / "det.json"), str(tmp_path / "out"), "pycocotools")
    return [str(w.message) for w in caught]


def test_scoring_mode_warns_when_most_images_with_objects_have_no_detection(tmp_path):
    """A model run with test.max_images=2 wrote detections of its first 2 images: scoring mode scores the 6
    images with objects (the crowd-only and the empty image hold none to find), the 4 others' as missed."""
    gt = one_object_per_image(tmp_path)
    hits = [{"image_id": ann["image_id"], "category_id": 1, "bbox": ann["bbox"], "score": 0.9}
            for ann in gt["annotations"]]
    assert score_with_warnings(tmp_path, hits[:2] + hits[6:]) == [
        f"{tmp_path / 'det.json'}: 4 of the 6 images of {tmp_path / 'gt.json'} that hold objects have no detection: "
        "made on a subset of the images? every image of --gt is scored, and the objects of those images count as "
        "missed (a detections.json of test.max_images=N holds the first N images)"]
    # Half of them missed is left alone, and so is a file without any detection (it has a warning of its own).
    assert score_with_warnings(tmp_path, hits[:3]) == []
    assert score_with_warnings(tmp_path, []) == []
    # Model mode scores the images it ran, and says nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scored = score_test_set(gt, [1, 2], hits[:2], [], "pycocotools")
    assert scored["bbox"]["AP"] == pytest.approx(100.0)


def test_the_backends_give_the_same_12_numbers_on_a_coco_like_held_out_set():
    """300 images over COCO's 80 category ids with empty images and crowd regions, the detections jittered
    ground truth and random boxes with scores rounded to 5 decimals (ties), as benchmarks/bench_coco_eval.py
    makes them at COCO val size. The 12 numbers are equal, not close; of the precision table (10 IoUs x 101
    recalls x 80 classes x 4 areas x 3 detection limits) some entries differ in the last bit (0.9999999999999998
    against 1.0), hence its tolerance of 1e-15."""
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed: pip install '.[fast-eval]'")
    bench = load_benchmark_script("bench_coco_eval")
    gt = bench.coco_val_like(300, seed=5)
    results = bench.perturbed_detections(gt, per_image=10, seed=6)
    with_objects = {a["image_id"] for a in gt["annotations"]}
    assert len(gt["images"]) - len(with_objects) >= 2 and sum(a["iscrowd"] for a in gt["annotations"]) >= 10
    assert len({a["category_id"] for a in gt["annotations"]}) == 80
    slow = evaluate_detections(gt, results, "pycocotools")
    fast = evaluate_detections(gt, results, "faster_coco_eval")
    assert (slow["backend"], fast["backend"]) == ("pycocotools", "faster_coco_eval")
    assert 10 < slow["bbox"]["AP"] < 90 and slow["bbox"]["AR1"] < slow["bbox"]["AR10"]
    np.testing.assert_array_equal([fast["bbox"][k] for k in STAT_NAMES], [slow["bbox"][k] for k in STAT_NAMES])
    assert np.abs(fast["precision"] - slow["precision"]).max() <= 1e-15


def test_auto_backend_is_the_faster_one_when_installed_and_says_so(caplog):
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed: pip install '.[fast-eval]'")
    gt, results = fixture_dataset()
    with caplog.at_level(logging.INFO, logger="detection.evaluation.coco_eval"):
        scored = evaluate_detections(gt, results)  # test.eval_backend's default, auto
    assert scored["backend"] == "faster_coco_eval"
    assert "COCO scoring backend: faster_coco_eval (test.eval_backend=auto)" in caplog.messages
    assert metrics_for_json(scored)["backend"] == "faster_coco_eval"
    assert DetectionConfig().test.eval_backend == "auto"


def test_auto_backend_falls_back_to_pycocotools(monkeypatch, caplog):
    gt, results = fixture_dataset()
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # an import of it now fails
    with caplog.at_level(logging.INFO, logger="detection.evaluation.coco_eval"):
        scored = evaluate_detections(gt, results, "auto")
    assert scored["backend"] == "pycocotools"
    assert "COCO scoring backend: pycocotools (test.eval_backend=auto)" in caplog.messages
    np.testing.assert_array_equal([scored["bbox"][k] for k in STAT_NAMES], percent(pycocotools_stats(gt, results).stats))
    assert evaluate_detections(gt, [], "auto")["backend"] == "pycocotools"


def two_boxes_one_image(ann_ids=(1, 2), drop=()):
    """Two objects on one image: a medium one (40x40) and a large one (120x120)."""
    annotations = [{"id": ann_ids[0], "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                    "iscrowd": 0},
                   {"id": ann_ids[1], "image_id": 1, "category_id": 1, "bbox": [100, 100, 120, 120], "area": 14400,
                    "iscrowd": 0}]
    for annotation in annotations:
        for key in drop:
            annotation.pop(key)
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 300, "height": 300}], "annotations": annotations,
          "categories": [{"id": 1, "name": "x"}]}
    exact = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
             {"image_id": 1, "category_id": 1, "bbox": [100, 100, 120, 120], "score": 0.8}]
    return gt, exact


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
@pytest.mark.parametrize("ann_ids, drop", [((0, 1), ()), ((5, 5), ()), ((1, 2), ("area",)), ((1, 2), ("iscrowd",))],
                         ids=["annotation-id-0", "shared-annotation-id", "no-area", "no-iscrowd"])
def test_custom_ground_truth_is_scored_as_coco_scores_its_own(backend, ann_ids, drop):
    """Both detections are exact, so every defined AP is 100 and the two objects are one medium (40x40)
    and one large (APs undefined). Left to the libraries, an annotation of id 0 or two of one id score AP 25 in both, no
    area raises KeyError (pycocotools) or puts both among the small ones (faster-coco-eval), no iscrowd
    raises KeyError (pycocotools)."""
    if backend == "faster_coco_eval" and not installed("faster_coco_eval"):
        pytest.skip("faster-coco-eval is not installed")
    gt, exact = two_boxes_one_image(ann_ids, drop)
    bbox = evaluate_detections(gt, exact, backend)["bbox"]
    assert [bbox[name] for name in ("AP", "APs", "APm", "APl")] == pytest.approx([100, math.nan, 100, 100], nan_ok=True)
    assert [ann["id"] for ann in gt["annotations"]] == list(ann_ids)  # the caller's dict is left as it was


def test_categories_that_share_a_name_keep_a_row_each():
    gt, exact = two_boxes_one_image()
    gt["categories"].append({"id": 2, "name": "x"})
    gt["annotations"][1]["category_id"] = 2
    per_category = evaluate_detections(gt, exact[:1], "pycocotools")["per_category"]
    assert per_category == {"x (id 1)": pytest.approx(100.0), "x (id 2)": pytest.approx(0.0)}


def test_undefined_metrics_are_na_in_the_table_and_null_in_metrics_json():
    gt, exact = two_boxes_one_image()  # no small object: APs and ARs are undefined
    metrics = evaluate_detections(gt, exact, "pycocotools")
    assert "APs n/a" in format_results(metrics) and "ARs n/a" in format_results(metrics)
    assert "APm 100.00" in format_results(metrics)
    assert metrics_for_json(metrics)["bbox"]["APs"] is None and metrics_for_json(metrics)["bbox"]["APm"] == 100.0
    small_line = [line for line in metrics["summary"].splitlines() if "area= small" in line][0]
    assert small_line.endswith("=    n/a") and "-1.000" not in metrics["summary"]
