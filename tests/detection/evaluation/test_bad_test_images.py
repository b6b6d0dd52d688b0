"""Unreadable test images: skipped, counted, named, and left out of the COCO evaluation."""

import contextlib
import copy
import io
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import detection.evaluation.coco_eval as coco_eval
from detection.config import load_detection_config
from detection.data.coco import CategoryMap
from detection.data.image_io import BadImageError
from detection.data.loader import build_test_dataset
from detection.evaluation.coco_eval import gather_test_results, metrics_for_json, score_test_set
from detection.evaluation.evaluator import evaluate_model, run_inference
from resnet_engine import loaders as loader_module
from resnet_engine.loaders import build_test_loader
from tests.helpers import TINY_DETECTOR, data_overrides, make_fixed_size_shapes

BAD_IMAGES = (2, 3, 4)


class GroundTruthDetector(torch.nn.Module):
    """Detections made from the ground truth of the sample's image id: each box shifted a little,
    plus one false positive, with scores that interleave them. It cannot see whether the pixels it
    is given belong to that id, which is what the dataset must guarantee."""

    def __init__(self, gt: dict):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # run_inference reads the device from a parameter
        self.anns = {image["id"]: [] for image in gt["images"]}
        for ann in gt["annotations"]:
            self.anns[ann["image_id"]].append(ann)

    def forward(self, batch):
        outputs = []
        for sample in batch:
            boxes, labels = [], []
            for index, ann in enumerate(self.anns[sample["image_id"]]):
                x, y, w, h = ann["bbox"]
                shift = 0.3 * w if index % 2 else 0.05 * w  # every other box misses IoU 0.75
                boxes.append([x + shift, y, x + w + shift, y + h])
                labels.append(ann["category_id"])
            boxes.append([0.0, 0.0, 20.0, 20.0])
            labels.append(1)
            scores = torch.linspace(0.9, 0.2, len(boxes))
            outputs.append({"boxes": torch.tensor(boxes), "scores": scores.roll(1), "labels": torch.tensor(labels)})
        return outputs


@pytest.fixture(scope="module")
def damaged_val(tmp_path_factory):
    """8 validation images, of which images 2, 3 and 4 are truncated or garbage files."""
    root = tmp_path_factory.mktemp("damaged")
    make_fixed_size_shapes(str(root), "train", 1, seed=0)
    ann_file = make_fixed_size_shapes(str(root), "val", 8, seed=1)
    gt = json.loads(open(ann_file, encoding="utf-8").read())
    names = {image["id"]: image["file_name"] for image in gt["images"]}
    (root / "val" / names[2]).write_bytes(b"not an image")
    whole = (root / "val" / names[3]).read_bytes()
    (root / "val" / names[3]).write_bytes(whole[: len(whole) // 3])
    (root / "val" / names[4]).write_bytes(b"")
    return root, gt


def category_map_of(gt: dict) -> CategoryMap:
    return CategoryMap([c["id"] for c in gt["categories"]], [c["name"] for c in gt["categories"]])


def tiny_cfg(root, *extra):
    return load_detection_config(None, TINY_DETECTOR + data_overrides(root) + ["test.ims_per_batch=2", *extra])


def reference_ap_on_good_images(gt: dict, model: GroundTruthDetector) -> list[float]:
    """pycocotools on a ground truth holding only the readable images, with their detections."""
    good = [image for image in gt["images"] if image["id"] not in BAD_IMAGES]
    kept = {**gt, "images": good, "annotations": [a for a in gt["annotations"] if a["image_id"] not in BAD_IMAGES]}
    results = []
    for image in good:
        detections = model([{"image_id": image["id"]}])[0]
        for (x1, y1, x2, y2), score, label in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                                  detections["labels"].tolist()):
            results.append({"image_id": image["id"], "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(kept)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) * 100 if s > -1 else float("nan") for s in evaluator.stats]  # -1: nothing to find


def test_unreadable_test_images_are_left_out_of_the_evaluation(damaged_val):
    root, gt = damaged_val
    cfg = tiny_cfg(root)
    dataset = build_test_dataset(cfg, category_map_of(gt), resize=True)
    model = GroundTruthDetector(gt)
    with pytest.warns(UserWarning, match=r"3 unreadable test images were skipped .*0001.png, .*0002.png, .*0003.png"):
        metrics = evaluate_model(model, dataset, cfg, progress=False)
    assert metrics["num_images"] == 5 and metrics["skipped_images"] == 3
    reference = reference_ap_on_good_images(gt, model)
    assert 20 < reference[0] < 90  # a score that the replaced or the missed images would change
    # metrics.json's numbers: an undefined one (no large object here) is null
    assert [metrics["bbox"][k] for k in coco_eval.STAT_NAMES] == [
        None if math.isnan(value) else pytest.approx(value, abs=1e-3) for value in reference]


def test_two_processes_gather_their_unreadable_images(damaged_val, monkeypatch):
    """Each rank evaluates every second image; the main process scores what both saw."""
    root, gt = damaged_val
    cfg = tiny_cfg(root, "test.ims_per_batch=1")
    dataset = build_test_dataset(cfg, category_map_of(gt), resize=True)
    model = GroundTruthDetector(gt)
    parts = []
    for rank in range(2):
        monkeypatch.setattr(loader_module, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(loader_module, "get_world_size", lambda: 2)
        results, _, unreadable = run_inference(model, build_test_loader(dataset, 1, 0),
                                               dataset.category_map.category_ids, progress=False)
        parts.append((results, unreadable))
    assert [len(unreadable) for _, unreadable in parts] == [1, 2]  # image 3 on rank 0; 2 and 4 on rank 1
    monkeypatch.setattr(coco_eval.dist_utils, "all_gather_objects", lambda obj: [part for _, part in parts])
    monkeypatch.setattr(coco_eval.dist_utils, "concatenate_on_main", lambda items: parts[0][0] + parts[1][0])
    results, unreadable = gather_test_results(*parts[0], image_ids=[r["image_id"] for r in dataset.records])
    assert [image_id for image_id, _ in unreadable] == list(BAD_IMAGES)
    with pytest.warns(UserWarning, match="3 unreadable test images"):
        scored = score_test_set(gt, [r["image_id"] for r in dataset.records], results, unreadable)
    written = metrics_for_json(scored)
    assert written["num_images"] == 5 and written["skipped_images"] == 3
    assert scored["bbox"]["AP"] == pytest.approx(reference_ap_on_good_images(gt, model)[0], abs=1e-9)


def test_a_test_image_is_never_replaced_by_another(damaged_val):
    root, gt = damaged_val
    dataset = build_test_dataset(tiny_cfg(root), category_map_of(gt), resize=True)
    sample = dataset[1]  # image id 2, unreadable
    assert sample["image"] is None and sample["image_id"] == 2 and sample["skipped"][0].endswith("0001.png")
    assert dataset[4]["image_id"] == 5 and dataset[4]["image"].shape[0] == 3


def test_on_bad_image_fail_stops_with_one_line_naming_the_file(damaged_val):
    root, gt = damaged_val
    dataset = build_test_dataset(tiny_cfg(root, "data.on_bad_image=fail"), category_map_of(gt), resize=True)
    with pytest.raises(BadImageError) as caught:
        list(build_test_loader(dataset, 2, num_workers=0))
    message = str(caught.value)
    assert message.startswith("cannot decode image: ") and message.endswith("0001.png (set data.on_bad_image=skip "
                                                                            "to continue without it)")
    # With data.num_workers > 0, PyTorch raises the worker's error again in the main process with the
    # worker's traceback as its message (a real worker takes 5 s to shut down after an error, too slow
    # for this test; the format below is what torch 2.x writes).
    from_worker = BadImageError(f"Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback "
                                f"(most recent call last):\n  File \"worker.py\", line 349, in _worker_loop\n"
                                f"    data = fetcher.fetch(index)\ndetection.data.image_io.BadImageError: {message}\n")
    assert str(from_worker) == message


def test_no_readable_test_image_is_an_error(tmp_path):
    make_fixed_size_shapes(str(tmp_path), "train", 1)
    ann_file = make_fixed_size_shapes(str(tmp_path), "val", 2)
    for path in (tmp_path / "val").iterdir():
        path.write_bytes(b"")
    gt = json.loads(open(ann_file, encoding="utf-8").read())
    dataset = build_test_dataset(tiny_cfg(tmp_path), category_map_of(gt), resize=True)
    with pytest.raises(BadImageError, match="none of the 2 test images can be read, e.g. .*0000.png"):
        evaluate_model(GroundTruthDetector(gt), dataset, tiny_cfg(tmp_path), progress=False)
