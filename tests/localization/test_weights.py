"""The checkpoints the localizers load: another task's or stage's file given where a per-class RPN is expected is
named as what it is, with what to give instead; every checkpoint is built with the anchors, normalization and
warp it was trained with."""

import os
import warnings

import numpy as np
import pytest
import torch

from classification.data.synthetic_ilsvrc import WNIDS
from localization.config import load_localization_config
from localization.data.rcnn_rois import warp_regions
from localization.rcnn import build_rcnn
from localization.weights import (
    load_localizer,
    load_proposal_rpn,
    load_rcnn,
    trained_config,
    warn_untrained_values,
)
from resnet_engine.checkpoint import atomic_save
from resnet_engine.config import config_to_text
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.localization.test_ensemble import SYNSETS, decode, rpn_config, save_rpn, view_pixels
from tests.localization.test_rcnn import TINY_RCNN
from tests.localization.test_rpn_localizer import tiny_root  # noqa: F401 - a fixture

SHAPES_RCNN = os.path.join(ROOT, "configs", "shapes_loc_rcnn.yaml")

FIX = "set rcnn.rpn_weights to output/<rpn run>/model_final.pth"


@pytest.mark.parametrize("meta, config, what", [
    ({"task": "classification"}, "model:\n  backbone:\n    plain: false\n",
     "is a classifier checkpoint of tools/train_cls.py, not a per-class RPN"),
    ({"task": "detection", "arch": "fpn"}, "model:\n  arch: fpn\n",
     "is a detector checkpoint of tools/train_det.py, not a per-class RPN"),
    ({"task": "localization", "stage": "rcnn"}, "task: rcnn\n",
     "is an R-CNN checkpoint of tools/train_loc.py (task: rcnn), not the per-class RPN that makes its proposals"),
    ({}, "", "is not a per-class RPN checkpoint of tools/train_loc.py"),
], ids=["classifier", "detector", "rcnn", "unmarked"])
def test_rpn_weights_of_another_kind_say_what_the_file_is(tmp_path, meta, config, what):
    """A classifier's or detector's config was read with the localization schema: an omegaconf traceback
    (Key 'plain' not in 'BackboneConfig')."""
    path = tmp_path / "model_final.pth"
    torch.save({"model": {}, "meta": meta, "config": config}, path)
    with pytest.raises(UserError) as error:
        load_proposal_rpn(None, None, str(path))
    assert str(error.value) == f"{path} {what}: {FIX}"


# ------------------------------------------------------------------------------------- built as it was trained


def test_a_checkpoint_is_built_with_its_own_anchors_and_normalization_whatever_the_config(tiny_root, tmp_path):  # noqa: F811
    """Other anchor sizes of the same count, or another pixel mean, fit the same tensors: the network was
    built from the scoring config, and its boxes were decoded against anchors it was not trained on."""
    trained_cfg = rpn_config(tiny_root, tmp_path, "model.anchor_sizes=[8,20,40]", "input.pixel_mean=[0.5,0.5,0.5]")
    trained = save_rpn(trained_cfg, tmp_path / "a.pth", seed=1)
    scoring_cfg = rpn_config(tiny_root, tmp_path)
    loaded = load_localizer(scoring_cfg, str(tmp_path / "a.pth"), SYNSETS).eval()
    # The square (ratio 1) cell anchors of sides 8, 20, 40, centred on 0; the config's are 16, 32, 48.
    assert loaded.cell[3:6].tolist() == [[-4, -4, 4, 4], [-10, -10, 10, 10], [-20, -20, 20, 20]]
    assert loaded.pixel_mean.flatten().tolist() == pytest.approx([0.5 / 255] * 3)
    boxes, scores = loaded.class_boxes(view_pixels())
    expected_boxes, expected_scores = trained.class_boxes(view_pixels())
    assert torch.equal(boxes, expected_boxes) and torch.equal(scores, expected_scores)
    with pytest.warns(UserWarning) as caught:
        warn_untrained_values(scoring_cfg, trained_config(scoring_cfg, str(tmp_path / "a.pth")), "a.pth")
    assert [str(w.message) for w in caught] == [
        "a.pth is scored as it was trained, not as the config says: model.anchor_sizes=[8.0, 20.0, 40.0] (the "
        "config: [16.0, 32.0, 48.0]); input.pixel_mean=[0.5, 0.5, 0.5] (the config: [123.675, 116.28, 103.53])"]


def test_an_rcnn_warps_and_decodes_as_it_was_trained(tiny_root, tmp_path):  # noqa: F811
    """rcnn.warp_size, context_pad and bbox_reg_weights came from the scoring config."""
    overrides = [*TINY_RCNN, f"data.root={tiny_root}", f"output_dir={tmp_path}"]
    trained_cfg = load_localization_config(SHAPES_RCNN, [*overrides, "rcnn.bbox_reg_weights=[1,1,1,1]"])
    torch.manual_seed(1)
    trained = build_rcnn(trained_cfg, len(WNIDS), load_backbone_weights=False).eval()
    with torch.no_grad():
        trained.cls_score.weight.normal_(std=0.5)
        trained.bbox_pred.weight.normal_(std=0.05)
    atomic_save({"model": trained.state_dict(), "config": config_to_text(trained_cfg),
                 "meta": {"task": "localization", "stage": "rcnn", "wnids": list(WNIDS)}}, str(tmp_path / "r.pth"))
    scoring_cfg = load_localization_config(SHAPES_RCNN, [*overrides, "rcnn.warp_size=48", "rcnn.context_pad=8"])
    loaded = load_rcnn(scoring_cfg, str(tmp_path / "r.pth"), SYNSETS).eval()
    assert (loaded.rules.warp_size, loaded.rules.context_pad) == (32, 2)
    assert tuple(loaded.coder.weights) == (1.0, 1.0, 1.0, 1.0)
    image = view_pixels(3, (40, 48))[0]
    proposals = torch.tensor([[[2.0, 3.0, 20.0, 30.0], [5.0, 1.0, 40.0, 25.0]]])
    boxes, scores = loaded.rescore(image, proposals, [4])
    crops = warp_regions(image[None].float(), [proposals[0]], 32, 2)  # the trained warp, written out
    with torch.no_grad():
        logits, deltas = trained.head(trained.normalize(crops))
    probability = logits.double().softmax(dim=1)[:, 5]
    best = int(probability.argmax())
    assert scores.tolist() == pytest.approx([float(probability[best])], rel=1e-5)
    expected = decode(deltas[best, 4].double().numpy(), proposals[0, best].double().numpy())
    np.testing.assert_allclose(boxes[0].numpy(), expected, atol=1e-3)


def test_model_mode_scores_model_final_and_names_a_periodic_checkpoint_it_falls_back_to(tmp_path):
    """Without model_final.pth the newest periodic checkpoint is scored: its errors are those of a
    network still in training, and the table would not say so."""
    from localization.weights import latest_weights
    from resnet_engine.checkpoint import atomic_save
    for name in ("model_0000100.pth", "model_0000200.pth", "model_best.pth"):
        atomic_save({"model": {}, "iteration": 0}, str(tmp_path / name))
    with pytest.warns(UserWarning) as caught:
        assert latest_weights(str(tmp_path)) == str(tmp_path / "model_0000200.pth")
    assert [str(w.message) for w in caught] == [
        f"no model_final.pth in {tmp_path}: scoring model_0000200.pth, the newest checkpoint (iteration 200), whose "
        f"errors are not the finished run's; give --weights to score another"]
    atomic_save({"model": {}, "iteration": 0}, str(tmp_path / "model_final.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_weights(str(tmp_path)) == str(tmp_path / "model_final.pth")
