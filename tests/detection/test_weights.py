"""Weights that do not fit the config: the message names the difference that explains it."""

import os
import warnings

import pytest
import torch

from detection.config import load_detection_config
from detection.modeling.build import build_model
from detection.weights import load_detector, warn_if_other_test_scale
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR

SHAPES = os.path.join(ROOT, "configs", "shapes.yaml")
C4 = ["model.arch=c4", "model.anchors.sizes=[[32,64,128]]", "model.roi_head.pooler_resolution=14"]


def saved_detector(tmp_path, overrides) -> str:
    cfg = load_detection_config(SHAPES, TINY_DETECTOR + overrides)
    path = tmp_path / "weights.pth"
    torch.save({"model": build_model(cfg, 3, backbone_weights=False).state_dict(), "meta": {"num_classes": 3}}, path)
    return str(path)


def fit_error(weights: str, overrides) -> str:
    with pytest.raises(UserError) as error:
        load_detector(load_detection_config(SHAPES, TINY_DETECTOR + overrides), weights, torch.device("cpu"))
    return str(error.value)


@pytest.mark.parametrize("trained, configured", [([], C4), (C4, [])])
def test_fpn_and_c4_weights_name_both_architectures(tmp_path, trained, configured):
    weights = saved_detector(tmp_path, trained)
    file_arch, config_arch = ("fpn", "c4") if not trained else ("c4", "fpn")
    named = {"fpn": "an FPN", "c4": "a C4"}
    assert fit_error(weights, configured) == (
        f"{weights} holds {named[file_arch]} detector and this config builds {named[config_arch]} one: "
        f"set model.arch={file_arch}, or use the config the weights were trained with")


def test_global_context_hint_says_which_way(tmp_path):
    weights = saved_detector(tmp_path, [])
    message = fit_error(weights, ["model.roi_head.global_context=true"])
    assert message.startswith(f"{weights} does not fit the model of this config (the weights were trained without "
                              f"global context: set model.roi_head.global_context=false): ")
    assert "roi_heads.predictor.cls_score.weight: file [4, 64] vs model [4, 128]" in message
    context_weights = saved_detector(tmp_path, ["model.roi_head.global_context=true"])
    assert "(the weights were trained with global context: set model.roi_head.global_context=true)" in \
        fit_error(context_weights, [])


def test_another_box_head_width_is_not_called_global_context(tmp_path):
    weights = saved_detector(tmp_path, [])  # fc_dim 64
    message = fit_error(weights, ["model.roi_head.fc_dim=96"])
    assert "global" not in message and "roi_heads.box_head.fc6.weight" in message


def test_a_detector_runs_with_the_input_normalization_it_was_trained_with(tmp_path):
    """Normalization and channel order are not in a state dict: run with the config's RGB and ImageNet means,
    a detector trained on BGR with Caffe's means detected other boxes, while the same file in an ensemble
    used its own. The checkpoint's config says which; the detector takes them and the warning names them."""
    from omegaconf import OmegaConf
    bgr = ["input.format=BGR", "input.pixel_mean=[102.98,115.95,122.77]", "input.pixel_std=[1,1,1]"]
    trained_cfg = load_detection_config(SHAPES, TINY_DETECTOR + bgr)
    path = tmp_path / "bgr.pth"
    torch.save({"model": build_model(trained_cfg, 3, backbone_weights=False).state_dict(),
                "meta": {"num_classes": 3}, "config": OmegaConf.to_yaml(trained_cfg)}, path)
    default_cfg = load_detection_config(SHAPES, TINY_DETECTOR)
    with pytest.warns(UserWarning, match=r"bgr.pth was trained with input.pixel_mean=\[102.98, 115.95, 122.77\], "
                                         r"input.pixel_std=\[1.0, 1.0, 1.0\], input.format=BGR: the detector runs "
                                         r"with them \(the config's: input.pixel_mean=\[123.675"):
        model, _ = load_detector(default_cfg, str(path), torch.device("cpu"))
    reference = build_model(trained_cfg, 3, backbone_weights=False)
    assert model.preprocessor.input_format == "BGR"
    assert torch.equal(model.pixel_mean, reference.pixel_mean) and torch.equal(model.pixel_std, reference.pixel_std)


def test_another_test_scale_than_the_checkpoints_is_warned_of(tmp_path):
    """An export with the default config runs a detector trained and tested at 480 at 240 for good."""
    path = tmp_path / "model_final.pth"
    torch.save({"model": {}, "config": "input:\n  min_size_test: 480\n  max_size_test: 800\n"}, path)
    with pytest.warns(UserWarning, match=r"model_final.pth was tested at input.min_size_test=480; it runs at the "
                                         r"config's input.min_size_test=240 \(give the config.yaml of its run"):
        warn_if_other_test_scale(load_detection_config(None, ["input.min_size_test=240", "input.max_size_test=800"]),
                                 str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_other_test_scale(load_detection_config(None, ["input.min_size_test=480", "input.max_size_test=800"]),
                                 str(path))
