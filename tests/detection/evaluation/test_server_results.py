"""A test set without annotations (COCO's image_info files, such as test-dev2015): its detections are
written as the results file the COCO evaluation server asks for, and nothing is scored."""

import json
import os

import pytest
import torch

from detection.config import load_detection_config
from detection.data.coco import AnnotationError, CategoryMap
from detection.data.loader import build_test_dataset
from detection.evaluation.evaluator import evaluate_model, evaluate_weights, server_results_name
from detection.training import train_detector
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, data_overrides, make_fixed_size_shapes


class IdDetector(torch.nn.Module):
    """Two detections per image, made from its image id alone, so that the file can be checked by hand."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # run_inference reads the device from a parameter

    def forward(self, batch):
        return [{"boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [3.0 * s["image_id"], 4.0, 40.0, 50.0]]),
                 "scores": torch.tensor([0.75, 0.5]), "labels": torch.tensor([2, 1])} for s in batch]


@pytest.fixture(scope="module")
def image_info_split(tmp_path_factory):
    """The shapes val split twice: with its annotations, and as an image_info json that has none."""
    root = tmp_path_factory.mktemp("image_info")
    make_fixed_size_shapes(str(root), "train", 2, seed=0)
    ann_file = make_fixed_size_shapes(str(root), "val", 3, seed=1)
    gt = json.loads(open(ann_file, encoding="utf-8").read())
    info = {key: value for key, value in gt.items() if key != "annotations"}
    info_file = root / "annotations" / "image_info_test-dev2015.json"
    info_file.write_text(json.dumps(info))
    return root, gt, str(info_file)


def categories_of(gt: dict) -> CategoryMap:
    return CategoryMap([c["id"] for c in gt["categories"]], [c["name"] for c in gt["categories"]])


def test_the_file_is_named_as_the_server_asks():
    assert server_results_name("ann/image_info_test-dev2015.json", "output/coco2014_r101_testdev") == \
        "detections_test-dev2015_coco2014-r101-testdev_results.json"
    assert server_results_name("instances_val2014.json", "out/my model/") == "detections_val2014_my-model_results.json"


def test_a_test_set_without_annotations_writes_the_results_file_and_scores_nothing(image_info_split, tmp_path):
    root, gt, info_file = image_info_split
    cfg = load_detection_config(None, TINY_DETECTOR + data_overrides(root) + [
        f"data.test.ann_file={info_file}", f"output_dir={tmp_path}/run_1"])
    categories = categories_of(gt)
    dataset = build_test_dataset(cfg, categories, resize=True)
    metrics = evaluate_model(IdDetector(), dataset, cfg, progress=False)
    path = tmp_path / "run_1" / "detections_test-dev2015_run-1_results.json"
    assert metrics == {"results_file": str(path), "num_images": 3, "skipped_images": 0}
    second, first = categories.category_ids[1], categories.category_ids[0]
    # The records written out by hand: [x, y, width, height] of each box, the labels' category ids.
    expected = [record for image_id in (1, 2, 3) for record in (
        {"image_id": image_id, "category_id": second, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.75},
        {"image_id": image_id, "category_id": first, "bbox": [3.0 * image_id, 4.0, 40.0 - 3.0 * image_id, 46.0],
         "score": 0.5})]
    assert sorted(json.loads(path.read_text()), key=lambda r: (r["image_id"], -r["score"])) == expected
    assert [image["id"] for image in gt["images"]] == [1, 2, 3]


def test_an_empty_annotations_list_is_still_an_error(image_info_split, tmp_path):
    """Only a json without the list is a server-scored split; an empty list is missing ground truth."""
    root, gt, _ = image_info_split
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**gt, "annotations": []}))
    cfg = load_detection_config(None, TINY_DETECTOR + data_overrides(root) + [f"data.test.ann_file={empty}"])
    with pytest.raises(AnnotationError, match="no object box in 3 images"):
        build_test_dataset(cfg, categories_of(gt), resize=True)


def test_training_and_eval_det_on_a_split_without_annotations(image_info_split, tmp_path, capsys):
    root, gt, info_file = image_info_split
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), TINY_DETECTOR + data_overrides(root) + [
        f"data.test.ann_file={info_file}", f"output_dir={tmp_path}/testdev", "solver.max_iter=1", "solver.steps=[1]",
        "solver.warmup_iters=0", "test.score_thresh=0.0"])  # every image then has detections to compare
    final = train_detector(cfg)
    path = os.path.join(cfg.output_dir, "detections_test-dev2015_testdev_results.json")
    assert final["results_file"] == path and "bbox" not in final
    trained = json.loads(open(path, encoding="utf-8").read())
    assert {r["image_id"] for r in trained} == {1, 2, 3}
    metrics = evaluate_weights(cfg, os.path.join(cfg.output_dir, "model_final.pth"), str(tmp_path / "eval"))
    again = tmp_path / "eval" / "detections_test-dev2015_eval_results.json"
    assert metrics["results_file"] == str(again)
    assert_same_records(json.loads(again.read_text()), trained)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 3
    assert not (tmp_path / "eval" / "detections.json").exists()
    assert "has no annotations, so nothing is scored here" in capsys.readouterr().out


def assert_same_records(found: list[dict], expected: list[dict]) -> None:
    """The same detections in the same order; box coordinates (written with 3 decimals) and scores (5) may
    differ by one unit of the last decimal, where the model's output in two runs differs in its last bits
    across a rounding boundary."""
    assert len(found) == len(expected)
    rounded = ("bbox", "score")
    for record, reference in zip(found, expected):
        assert ({k: v for k, v in record.items() if k not in rounded}
                == {k: v for k, v in reference.items() if k not in rounded})
        assert record["bbox"] == pytest.approx(reference["bbox"], abs=1.01e-3)
        assert record["score"] == pytest.approx(reference["score"], abs=1.01e-5)
