"""Localizer and classifier ensembles (paper Tables 13-14): one network is itself, a network with itself is
itself, two networks give the hand-computed averages of their outputs, and tools/eval_loc.py runs them."""

import json
import os

import numpy as np
import pytest
import torch

from classification.data.ilsvrc import Synsets
from classification.data.synthetic_ilsvrc import WNIDS
from localization.config import load_localization_config
from localization.ensemble import (
    EnsembleError,
    RCNNEnsemble,
    RPNEnsemble,
    load_rpn_ensemble,
)
from localization.evaluation.class_ranking import class_ranking
from localization.rcnn import build_rcnn
from localization.rpn_localizer import build_localizer
from resnet_engine.checkpoint import atomic_save
from resnet_engine.config import config_to_text
from tests.conftest import ROOT
from tests.localization.test_rcnn import TINY_RCNN
from tests.localization.test_rpn_localizer import (  # noqa: F401
    TINY_LOCALIZER,
    assert_submission_ranks,
    run_tool,
    tiny_root,
)

SHAPES_LOC = os.path.join(ROOT, "configs", "shapes_loc.yaml")
SYNSETS = Synsets(tuple(WNIDS), tuple(WNIDS), "test")


def rpn_config(root, out, *extra):
    return load_localization_config(SHAPES_LOC, [*TINY_LOCALIZER, f"data.root={root}", f"output_dir={out}", *extra])


def save_rpn(cfg, path, seed):
    """A per-class RPN checkpoint as tools/train_loc.py writes one, with random head weights of ``seed``."""
    torch.manual_seed(seed)
    model = build_localizer(cfg, len(WNIDS), load_backbone_weights=False)
    with torch.no_grad():  # spread the scores and deltas, so that the networks disagree clearly
        model.cls_logits.weight.normal_(std=0.5)
        model.bbox_deltas.weight.normal_(std=0.05)
    atomic_save({"model": model.state_dict(), "config": config_to_text(cfg),
                 "meta": {"task": "localization", "stage": "rpn", "wnids": list(WNIDS)}}, str(path))
    return model.eval()


def save_classifier(root, path, biases):
    """A tools/train_cls.py checkpoint whose class scores are ``biases`` on every image."""
    from classification.classifier import build_classifier
    from classification.config import load_classification_config

    cls_cfg = load_classification_config(os.path.join(ROOT, "configs", "cls_shapes.yaml"),
                                         ["model.backbone.base_width=8", f"data.root={root}"])
    classifier = build_classifier(cls_cfg, len(WNIDS))
    with torch.no_grad():
        classifier.backbone.fc.weight.zero_()
        classifier.backbone.fc.bias.copy_(torch.tensor(biases))
    atomic_save({"model": classifier.state_dict(), "config": config_to_text(cls_cfg),
                 "meta": {"task": "classification", "wnids": list(WNIDS)}}, str(path))


def decode(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The Faster R-CNN box parameterisation (unit weights), written out: (..., 4) deltas on (..., 4) anchors."""
    width, height = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    cx, cy = anchors[..., 0] + width / 2 + deltas[..., 0] * width, anchors[..., 1] + height / 2 + deltas[..., 1] * height
    w, h = width * np.exp(deltas[..., 2]), height * np.exp(deltas[..., 3])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def view_pixels(seed=0, size=(56, 64)):
    return torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------ per-class RPN


def test_one_file_is_the_network_itself(tiny_root, tmp_path):  # noqa: F811
    cfg = rpn_config(tiny_root, tmp_path)
    model = save_rpn(cfg, tmp_path / "a.pth", seed=1)
    loaded = load_rpn_ensemble(cfg, [str(tmp_path / "a.pth")], SYNSETS).eval()
    boxes, scores = loaded.class_boxes(view_pixels())
    expected_boxes, expected_scores = model.class_boxes(view_pixels())
    assert torch.equal(boxes, expected_boxes) and torch.equal(scores, expected_scores)


def test_a_network_with_itself_gives_its_own_boxes_and_scores(tiny_root, tmp_path):  # noqa: F811
    model = save_rpn(rpn_config(tiny_root, tmp_path), tmp_path / "a.pth", seed=1)
    doubled = RPNEnsemble([model, model]).eval()
    boxes, logits = doubled.class_boxes(view_pixels())
    expected_boxes, expected_logits = model.class_boxes(view_pixels())
    torch.testing.assert_close(boxes, expected_boxes, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(logits.sigmoid(), expected_logits.sigmoid(), atol=1e-6, rtol=1e-5)


def test_two_rpns_average_probabilities_and_boxes_of_each_anchor(tiny_root, tmp_path):  # noqa: F811
    cfg = rpn_config(tiny_root, tmp_path)
    first, second = save_rpn(cfg, tmp_path / "a.pth", 1), save_rpn(cfg, tmp_path / "b.pth", 2)
    pixels = view_pixels()
    # Reference: every anchor's probability and box of each network, averaged, then per class the anchor
    # of the highest mean probability.
    probabilities, boxes = [], []
    for model in (first, second):
        with torch.no_grad():
            logits, deltas, anchors = model.head(model.normalize(pixels))
        probabilities.append(torch.sigmoid(logits[0].double()).numpy())
        boxes.append(decode(deltas[0].double().numpy(), anchors.double().numpy()[:, None, :]))
    mean_probability, mean_box = np.mean(probabilities, axis=0), np.mean(boxes, axis=0)
    best = mean_probability.argmax(axis=0)
    classes = np.arange(len(WNIDS))
    assert (best != probabilities[0].argmax(axis=0)).any() or (best != probabilities[1].argmax(axis=0)).any(), \
        "the two networks should disagree somewhere for this test to mean something"

    ensemble = load_rpn_ensemble(cfg, [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")], SYNSETS).eval()
    got_boxes, got_logits = ensemble.class_boxes(pixels)
    np.testing.assert_allclose(got_logits[0].sigmoid().numpy(), mean_probability[best, classes], rtol=1e-5)
    np.testing.assert_allclose(got_boxes[0].numpy(), mean_box[best, classes], atol=1e-3)


def test_rpns_of_different_anchors_are_refused_in_one_line(tiny_root, tmp_path):  # noqa: F811
    save_rpn(rpn_config(tiny_root, tmp_path), tmp_path / "a.pth", 1)
    save_rpn(rpn_config(tiny_root, tmp_path, "model.anchor_sizes=[16,24,40]"), tmp_path / "b.pth", 2)
    with pytest.raises(EnsembleError) as error:
        load_rpn_ensemble(rpn_config(tiny_root, tmp_path), [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")],
                          SYNSETS)
    message = str(error.value)
    assert "\n" not in message and "b.pth has anchors of sizes [16, 24, 40]" in message
    assert "must share model.anchor_sizes" in message


# ------------------------------------------------------------------------------------------------ R-CNN stage


def test_two_rcnns_average_class_probabilities_and_boxes_of_the_same_proposals(tiny_root, tmp_path):  # noqa: F811
    cfg = load_localization_config(os.path.join(ROOT, "configs", "shapes_loc_rcnn.yaml"),
                                   [*TINY_RCNN, f"data.root={tiny_root}", f"output_dir={tmp_path}"])
    networks = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        network = build_rcnn(cfg, len(WNIDS), load_backbone_weights=False).eval()
        with torch.no_grad():
            network.cls_score.weight.normal_(std=0.5)
            network.bbox_pred.weight.normal_(std=0.05)
        networks.append(network)
    image = view_pixels(3, (40, 48))[0]
    generator = torch.Generator().manual_seed(4)
    corners = torch.rand(2, 4, 2, generator=generator) * torch.tensor([20.0, 16.0])
    proposals = torch.cat([corners, corners + 8 + torch.rand(2, 4, 2, generator=generator) * 16], dim=-1)
    classes = [4, 1]

    scores, boxes = [], []  # reference: each network's softmax and box of the asked class, written out
    for network in networks:
        with torch.no_grad():
            from localization.data.rcnn_rois import warp_regions

            crops = warp_regions(image[None].float(), [proposals.reshape(-1, 4)], 32, 2)
            logits, deltas = network.head(network.normalize(crops))
        probability = logits.double().softmax(dim=1).numpy().reshape(2, 4, -1)
        own = deltas.double().numpy().reshape(2, 4, len(WNIDS), 4)
        rows = np.arange(2)
        scores.append(probability[rows, :, np.array(classes) + 1])
        weights = np.array([10.0, 10.0, 5.0, 5.0])
        boxes.append(decode(own[rows, :, classes] / weights, proposals.double().numpy()))
    mean_score, mean_box = np.mean(scores, axis=0), np.mean(boxes, axis=0)
    best = mean_score.argmax(axis=1)

    got_boxes, got_scores = RCNNEnsemble(networks).rescore(image, proposals, classes)
    np.testing.assert_allclose(got_scores.numpy(), mean_score[np.arange(2), best], rtol=1e-5)
    np.testing.assert_allclose(got_boxes.numpy(), mean_box[np.arange(2), best], atol=1e-3)
    # One network through the same path: its own rescore.
    alone_boxes, alone_scores = networks[0].rescore(image, proposals, classes)
    best_alone = scores[0].argmax(axis=1)
    np.testing.assert_allclose(alone_scores.numpy(), scores[0][np.arange(2), best_alone], rtol=1e-5)
    np.testing.assert_allclose(alone_boxes.numpy(), boxes[0][np.arange(2), best_alone], atol=1e-3)


# ------------------------------------------------------------------------------------------------ classifiers

FIRST_BIASES = [0.0, 5.0, 1.0, 4.0, 2.0, 3.0]
SECOND_BIASES = [5.5, 4.0, 3.0, 1.5, 2.0, 0.0]


def averaged_softmax_top5(*biases):
    probabilities = [np.exp(b) / np.exp(b).sum() for b in map(np.array, biases)]
    return list(np.argsort(-np.mean(probabilities, axis=0), kind="stable")[:5])


def test_classifiers_rank_by_their_averaged_probabilities(tiny_root, tmp_path):  # noqa: F811
    cfg = rpn_config(tiny_root, tmp_path, "classifier.mode=1crop")
    save_classifier(tiny_root, tmp_path / "c1.pth", FIRST_BIASES)
    save_classifier(tiny_root, tmp_path / "c2.pth", SECOND_BIASES)
    expected = averaged_softmax_top5(FIRST_BIASES, SECOND_BIASES)
    # Hand-computed: [1, 0, 3, 5, 2]; neither classifier alone nor the averaged scores give it.
    assert expected == [1, 0, 3, 5, 2]
    assert expected != averaged_softmax_top5(FIRST_BIASES) and expected != averaged_softmax_top5(SECOND_BIASES)
    assert expected != list(np.argsort(-(np.array(FIRST_BIASES) + SECOND_BIASES), kind="stable")[:5])

    files = [str(tmp_path / "c1.pth"), str(tmp_path / "c2.pth")]
    rankings, name, source = class_ranking(files, cfg, SYNSETS, torch.device("cpu"), progress=False)
    assert len(rankings) == 12 and all(r == expected for r in rankings.values())
    assert name.startswith("ensemble of 2") and "c2.pth" in source
    alone, _, _ = class_ranking(files[:1], cfg, SYNSETS, torch.device("cpu"), progress=False)
    assert all(r == averaged_softmax_top5(FIRST_BIASES) for r in alone.values())
    doubled, _, _ = class_ranking(files[:1] * 2, cfg, SYNSETS, torch.device("cpu"), progress=False)
    assert doubled == alone


# ------------------------------------------------------------------------------------------------ command line


def test_eval_loc_with_two_localizers_and_two_classifiers(tiny_root, tmp_path):  # noqa: F811
    cfg = rpn_config(tiny_root, tmp_path)
    save_rpn(cfg, tmp_path / "a.pth", 1)
    save_rpn(cfg, tmp_path / "b.pth", 2)
    save_classifier(tiny_root, tmp_path / "c1.pth", FIRST_BIASES)
    save_classifier(tiny_root, tmp_path / "c2.pth", SECOND_BIASES)
    overrides = [*TINY_LOCALIZER, f"data.root={tiny_root}", f"output_dir={tmp_path}", "classifier.mode=1crop"]
    result = run_tool("eval_loc.py", "--cfg", SHAPES_LOC, "--weights", str(tmp_path / "a.pth"),
                      "--weights", str(tmp_path / "b.pth"), "--classifier-weights", str(tmp_path / "c1.pth"),
                      "--classifier-weights", str(tmp_path / "c2.pth"), "--out", str(tmp_path / "out"), *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["weights"] == [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")]
    assert metrics["num_images"] == 12 and metrics["classifier"].startswith("ensemble of 2")
    assert_submission_ranks(tmp_path / "out" / "loc_dense_submission.csv", FIXED_ENSEMBLE_RANKING)

    save_rpn(rpn_config(tiny_root, tmp_path, "model.anchor_sizes=[16,24,40]"), tmp_path / "c.pth", 3)
    refused = run_tool("eval_loc.py", "--cfg", SHAPES_LOC, "--weights", str(tmp_path / "a.pth"),
                       "--weights", str(tmp_path / "c.pth"), *overrides)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'c.pth'} has anchors of sizes [16, 24, 40]")


FIXED_ENSEMBLE_RANKING = (1, 0, 3, 5, 2)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
