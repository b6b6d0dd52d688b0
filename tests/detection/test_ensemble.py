"""The detector ensemble: one network is itself, two copies of one network are that network, two
different networks give the mean of their own heads' scores and boxes on the union of their proposals,
and weights of different classes are refused in one line."""

import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from detection.config import load_detection_config
from detection.ensemble import EnsembleError, load_detectors, load_ensemble
from detection.modeling.build import build_model, build_test_model
from detection.modeling.ensemble import DetectorEnsemble, EnsembleTestTimeDetector
from detection.modeling.faster_rcnn import FasterRCNN
from detection.modeling.roi_heads import select_detections
from detection.modeling.test_time import TestTimeDetector
from detection.predictor import Predictor
from tests.conftest import ROOT
from tests.detection.tv_reference import shapes_image
from tests.helpers import TINY_DETECTOR

HEIGHT, WIDTH = 160, 224  # at the tiny test scale: not resized
C4 = ["model.arch=c4", "model.backbone.depth=18", "model.backbone.base_width=8", "model.anchors.sizes=[[32,64,128]]",
      "model.roi_head.pooler_resolution=14"]
SMALL = TINY_DETECTOR + ["test.score_thresh=0.0", "test.detections_per_img=30", "model.rpn.post_nms_topk_test=40"]


def tiny_config(arch: str, extra=()):
    overrides = SMALL + (C4 if arch == "c4" else ["model.arch=fpn"]) + list(extra)
    return load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), overrides)


def images(count=2, seed=70):
    return [torch.from_numpy(shapes_image(seed + i, HEIGHT, WIDTH)).permute(2, 0, 1) for i in range(count)]


def calibrated_detector(cfg, seed: int, num_classes: int = 3) -> FasterRCNN:
    """A random detector whose BatchNorm statistics were measured on a few images (train-mode forwards,
    momentum=None: the plain average), in the trunk and, for C4, in the res5 box head, so that it
    behaves as a trained one does; its classifier is sharpened so that scores differ between classes."""
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes, backbone_weights=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        padded, sizes = model.preprocess(images(4, seed=50))
        model.backbone.train()
        features = model.backbone(padded)
        model.backbone.eval()
        boxes = [torch.tensor([[10.0, 10.0, 90.0, 80.0], [60.0, 40.0, 200.0, 150.0], [0.0, 0.0, 120.0, 160.0]])] * 4
        model.roi_heads.box_head.train()
        model.roi_heads.box_head(model.roi_heads.pooler(features, boxes, sizes))
        model.roi_heads.predictor.cls_score.weight.mul_(50)
    return model.eval()


def samples(batch_images):
    return [{"image": image, "height": 2 * HEIGHT, "width": 2 * WIDTH} for image in batch_images]


def assert_same_detections(got: list[dict], expected: list[dict], atol: float = 1e-4):
    for mine, theirs in zip(got, expected):
        assert len(mine["boxes"]) == len(theirs["boxes"]) > 0
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["scores"], theirs["scores"], atol=atol, rtol=0)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=atol, rtol=0)


def decode_by_hand(deltas: torch.Tensor, rois: torch.Tensor, weights, height: int, width: int) -> torch.Tensor:
    """(R, (K+1)*4) deltas on (R, 4) RoIs -> (R, K+1, 4) boxes clipped to the image: the Fast R-CNN
    parametrization (centre offsets by the RoI's size, log size ratios, divided by the weights, the
    log ratios capped at log(1000/16)), written out here as a reference."""
    deltas = deltas.view(len(rois), -1, 4)
    wx, wy, ww, wh = weights
    widths, heights = (rois[:, 2] - rois[:, 0])[:, None], (rois[:, 3] - rois[:, 1])[:, None]
    centre_x, centre_y = rois[:, 0:1] + 0.5 * widths, rois[:, 1:2] + 0.5 * heights
    cap = torch.log(torch.tensor(1000.0 / 16))
    x = deltas[..., 0] / wx * widths + centre_x
    y = deltas[..., 1] / wy * heights + centre_y
    w = torch.exp(torch.clamp(deltas[..., 2] / ww, max=cap)) * widths
    h = torch.exp(torch.clamp(deltas[..., 3] / wh, max=cap)) * heights
    boxes = torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)
    return torch.stack([boxes[..., 0].clamp(0, width), boxes[..., 1].clamp(0, height),
                        boxes[..., 2].clamp(0, width), boxes[..., 3].clamp(0, height)], dim=-1)


def head_by_hand(model: FasterRCNN, batch_images, rois: list[torch.Tensor], cfg):
    """Each image's class probabilities and clipped per-class boxes of ``rois`` through ``model``'s own
    modules, pooled, classified and decoded outside the ensemble's code path."""
    padded, sizes = model.preprocess(batch_images)
    features = model.backbone(padded)
    heads = model.roi_heads
    logits, deltas = heads.predictor(heads.box_head(heads.pooler(features, rois, sizes)))
    counts = [len(r) for r in rois]
    weights = list(cfg.model.roi_head.bbox_reg_weights)
    probabilities = [F.softmax(part, dim=-1) for part in logits.split(counts)]
    boxes = [decode_by_hand(part, r, weights, h, w) for part, r, (h, w) in zip(deltas.split(counts), rois, sizes)]
    return probabilities, boxes


@pytest.fixture(scope="module", params=["c4", "fpn"])
def arch_and_model(request):
    cfg = tiny_config(request.param)
    return cfg, calibrated_detector(cfg, seed=1)


@torch.inference_mode()
def test_an_ensemble_of_one_is_the_network(arch_and_model):
    _, model = arch_and_model
    batch = samples(images())
    assert_same_detections(DetectorEnsemble([model])(batch), model(batch), atol=0.0)


@torch.inference_mode()
def test_two_copies_of_one_network_give_its_detections(arch_and_model):
    """Every proposal comes twice with the same scores and boxes: the mean is the network's own, and
    the per-class NMS (IoU 1 with the twin) keeps one of each pair, so the detections are the network's."""
    _, model = arch_and_model
    batch = samples(images())
    ensemble = DetectorEnsemble([model, model])
    passes = ensemble.run_networks([s["image"] for s in batch])
    single = model.rpn(passes[0].padded_size, passes[0].features, passes[0].image_sizes)[0]
    union = ensemble.union_of_proposals(passes)
    assert all(torch.equal(u, torch.cat([p, p])) for u, p in zip(union, single))
    # Exact: (a + a) / 2 is a in floating point, and the heads compute each RoI's row on its own.
    assert_same_detections(ensemble(batch), model(batch), atol=0.0)


@pytest.fixture(scope="module")
def two_networks():
    cfg = tiny_config("c4")
    return cfg, calibrated_detector(cfg, seed=1), calibrated_detector(cfg, seed=2)


@torch.inference_mode()
def test_scores_and_boxes_are_the_mean_of_each_heads_on_fixed_proposals(two_networks):
    cfg, first, second = two_networks
    batch_images = images()
    rois = [torch.tensor([[12.0, 20.0, 100.0, 90.0], [50.0, 30.0, 210.0, 155.0], [5.0, 5.0, 40.0, 60.0]]),
            torch.tensor([[0.0, 0.0, 224.0, 160.0], [80.0, 60.0, 150.0, 120.0]])]
    ensemble = DetectorEnsemble([first, second])
    scores, boxes = ensemble.mean_predictions(ensemble.run_networks(batch_images), rois)
    first_scores, first_boxes = head_by_hand(first, batch_images, rois, cfg)
    second_scores, second_boxes = head_by_hand(second, batch_images, rois, cfg)
    for image in range(2):
        # The two networks disagree: their mean is not either one's.
        assert (first_scores[image] - second_scores[image]).abs().max() > 0.05
        torch.testing.assert_close(scores[image], (first_scores[image] + second_scores[image]) / 2, atol=1e-5, rtol=0)
        torch.testing.assert_close(boxes[image], (first_boxes[image] + second_boxes[image]) / 2, atol=1e-3, rtol=0)


@torch.inference_mode()
def test_detections_of_two_networks_are_one_nms_over_the_mean_on_the_union(two_networks):
    cfg, first, second = two_networks
    batch = samples(images())
    batch_images = [s["image"] for s in batch]
    union = []
    for model in (first, second):
        padded, sizes = model.preprocess(batch_images)
        union.append(model.rpn(tuple(padded.shape[-2:]), model.backbone(padded), sizes)[0])
    union = [torch.cat(pair) for pair in zip(*union)]
    first_scores, first_boxes = head_by_hand(first, batch_images, union, cfg)
    second_scores, second_boxes = head_by_hand(second, batch_images, union, cfg)
    expected = []
    for image in range(2):
        mean_scores = (first_scores[image] + second_scores[image]) / 2
        mean_boxes = (first_boxes[image] + second_boxes[image]) / 2
        detections = select_detections(mean_scores, mean_boxes, cfg.test.score_thresh, cfg.test.nms_thresh,
                                       cfg.test.detections_per_img)
        expected.append({**detections, "boxes": detections["boxes"] * 2})  # to the samples' doubled size
    got = DetectorEnsemble([first, second])(batch)
    assert_same_detections(got, expected, atol=1e-3)
    assert any(not torch.equal(g["labels"], s["labels"]) or g["scores"].shape != s["scores"].shape
               or not torch.allclose(g["scores"], s["scores"]) for g, s in zip(got, first(batch)))


def save_detector(model, path, names, config_text=""):
    torch.save({"model": model.state_dict(), "config": config_text,
                "meta": {"num_classes": len(names), "category_ids": list(range(1, len(names) + 1)),
                         "class_names": list(names)}}, path)
    return str(path)


def test_weights_of_other_classes_are_refused_in_one_line(two_networks, tmp_path):
    cfg, first, second = two_networks
    one = save_detector(first, tmp_path / "a.pth", ["circle", "square", "star"])
    other = save_detector(second, tmp_path / "b.pth", ["circle", "square", "triangle"])
    with pytest.raises(EnsembleError) as raised:
        load_ensemble(cfg, [one, other], torch.device("cpu"))
    message = str(raised.value)
    assert "\n" not in message and other in message and one in message and "triangle" in message


# Multi-scale testing ("paper" mode), box refinement and voting, at scales around the tiny test scale.
TEST_TIME = ["test.scales=[128,160,200]", "test.rpn_scale=160", "test.box_refinement=true", "test.box_voting=true"]


def original_samples(batch_images):
    """Samples as the test-time detector takes them: the original image, its size."""
    return [{"image": image, "height": image.shape[-2], "width": image.shape[-1]} for image in batch_images]


@torch.inference_mode()
def test_an_ensemble_of_one_with_the_test_time_improvements_is_the_network(two_networks):
    cfg, first, _ = two_networks
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), SMALL + C4 + TEST_TIME)
    batch = original_samples(images())
    ensemble = build_test_model(DetectorEnsemble([first]), cfg)
    assert isinstance(ensemble, EnsembleTestTimeDetector)
    assert_same_detections(ensemble(batch), build_test_model(first, cfg)(batch), atol=0.0)


@torch.inference_mode()
def test_test_time_ensemble_averages_the_multi_scale_heads_on_the_union_of_proposals(two_networks):
    """Proposals: the union of each network's at the RPN scale; a head's output on given RoIs: the
    mean of each network's own max-merged multi-scale head, each on its own pyramid."""
    cfg, first, second = two_networks
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), SMALL + C4 + TEST_TIME)
    ensemble = build_test_model(DetectorEnsemble([first, second]), cfg)
    alone = [TestTimeDetector(model, ensemble.options) for model in (first, second)]
    image = images(1)[0]
    levels = {scale: ensemble.level(image, scale) for scale in (128, 160, 200)}
    union = ensemble.proposals(levels[160])
    own_levels = [{scale: detector.level(image, scale) for scale in (128, 160, 200)} for detector in alone]
    expected_union = torch.cat([detector.proposals(own[160]) for detector, own in zip(alone, own_levels)])
    assert torch.equal(union, expected_union) and len(union) > 0
    rois = union[::7]
    scores, boxes = ensemble.head([levels[s] for s in (128, 160, 200)], rois, (HEIGHT, WIDTH))
    each = [detector.head([own[s] for s in (128, 160, 200)], rois, (HEIGHT, WIDTH))
            for detector, own in zip(alone, own_levels)]
    assert (each[0][0] - each[1][0]).abs().max() > 0.05  # the networks disagree
    torch.testing.assert_close(scores, (each[0][0] + each[1][0]) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(boxes, (each[0][1] + each[1][1]) / 2, atol=1e-4, rtol=0)
    # The whole pass runs: refined boxes re-scored by both heads, voting, one NMS.
    detections = ensemble(original_samples([image]))[0]
    assert len(detections["boxes"]) > 0 and torch.all(detections["scores"][:-1] >= detections["scores"][1:])


@torch.inference_mode()
def test_each_network_is_built_from_the_config_its_file_keeps(two_networks, tmp_path):
    """A C4 and an FPN detector in one ensemble: the FPN file keeps its config, the C4 one follows CFG."""
    cfg, first, _ = two_networks
    fpn_cfg = tiny_config("fpn")
    fpn = calibrated_detector(fpn_cfg, seed=3)

    names = ["circle", "square", "star"]
    paths = [save_detector(first, tmp_path / "c4.pth", names),
             save_detector(fpn, tmp_path / "fpn.pth", names, OmegaConf.to_yaml(fpn_cfg))]
    ensemble, category_map = load_detectors(cfg, paths, torch.device("cpu"))
    assert category_map.names == names
    arches = [any(key.startswith("backbone.fpn.") for key in m.state_dict()) for m in ensemble.models]
    assert arches == [False, True]
    batch = samples(images())
    # Loading puts each network on the inference fast path (BatchNorm folded): equal to float rounding.
    assert_same_detections(ensemble(batch), DetectorEnsemble([first, fpn])(batch), atol=1e-4)


@torch.inference_mode()
def test_eval_det_scores_an_ensemble(fixed_shapes, tmp_path, monkeypatch):
    """tools/eval_det.py with two --weights, end to end on a COCO-format split: its detections file
    holds the ensemble's detections of the split's images, read from disk here, and they are scored."""
    gt = json.loads((fixed_shapes / "annotations" / "instances_val.json").read_text())
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    cfg = tiny_config("c4")
    first, second = (calibrated_detector(cfg, seed, len(names)) for seed in (1, 2))
    paths = [save_detector(m, tmp_path / f"{i}.pth", names) for i, m in enumerate((first, second))]
    data = [f"data.test.ann_file={fixed_shapes}/annotations/instances_val.json", f"data.test.img_dir={fixed_shapes}/val",
            "data.synthetic=''", f"output_dir={tmp_path}/out"]
    assert run_eval_det(monkeypatch, "--cfg", os.path.join(ROOT, "configs", "shapes.yaml"), "--weights", paths[0],
                        "--weights", paths[1], "--out", str(tmp_path / "eval"), *SMALL, *C4, *data) == 0
    written = json.loads((tmp_path / "eval" / "detections.json").read_text())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == len(gt["images"]) == 2
    ensemble = DetectorEnsemble([first, second])
    for image in gt["images"]:
        pixels = cv2.cvtColor(cv2.imread(str(fixed_shapes / "val" / image["file_name"])), cv2.COLOR_BGR2RGB)
        expected = ensemble([{"image": torch.from_numpy(pixels).permute(2, 0, 1)}])[0]
        mine = sorted((d for d in written if d["image_id"] == image["id"]), key=lambda d: -d["score"])
        assert len(mine) == len(expected["scores"]) > 0
        torch.testing.assert_close(torch.tensor([d["score"] for d in mine]), expected["scores"], atol=1e-4, rtol=0)
        assert [d["category_id"] for d in mine] == expected["labels"].tolist()  # category ids 1..K


def run_eval_det(monkeypatch, *args) -> int:
    """tools/eval_det.py's main() in this process, as its command line runs it."""
    spec = importlib.util.spec_from_file_location("tools_eval_det", os.path.join(ROOT, "tools", "eval_det.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["eval_det.py", *args])
    return module.main()


@torch.inference_mode()
def test_predictor_with_several_weight_files_runs_their_ensemble(two_networks, tmp_path):
    cfg, first, second = two_networks
    paths = [save_detector(m, tmp_path / f"{i}.pth", ["circle", "square", "star"]) for i, m in enumerate((first, second))]
    predictor = Predictor(cfg, paths, device="cpu")
    rgb = shapes_image(90, HEIGHT, WIDTH)  # at the test scale: the predictor does not resize it
    got = predictor(rgb)
    expected = DetectorEnsemble([first, second])([{"image": torch.from_numpy(rgb).permute(2, 0, 1)}])[0]
    assert len(got["scores"]) == len(expected["scores"]) > 0
    np.testing.assert_allclose(got["scores"], expected["scores"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["boxes"], expected["boxes"].numpy(), atol=1e-3, rtol=0)
    assert got["labels"].tolist() == expected["labels"].tolist()
    assert got["class_names"] == [["circle", "square", "star"][label - 1] for label in got["labels"].tolist()]
