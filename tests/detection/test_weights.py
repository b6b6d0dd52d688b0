"""Weights that do not fit the config, or are no detector's: the message names the difference that explains it
and what to give."""

import os
import warnings

import pytest
import torch

from detection.config import load_detection_config
from detection.data.coco import CategoryMap
from detection.modeling.build import build_model
from detection.weights import load_detector, load_weights_to_fine_tune, warn_if_other_test_scale
from resnet_engine.config import config_to_text, save_config
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


# --------------------------------------------------------------------------------------------- files that are no detector


@pytest.mark.parametrize("meta, what", [
    ({"task": "classification", "wnids": ["n01", "n02"]},
     "a classifier checkpoint of tools/train_cls.py, not a detector: give a detector checkpoint of tools/train_det.py, "
     "such as output/<det run>/model_final.pth (a classifier's network starts a detector's backbone as "
     "model.backbone.weights={path})"),
    ({"task": "classification", "dataset": "cifar10"},  # a CIFAR net is no detector's backbone
     "a classifier checkpoint of tools/train_cls.py, not a detector: give a detector checkpoint of tools/train_det.py, "
     "such as output/<det run>/model_final.pth"),
    ({"task": "localization", "stage": "rpn"},
     "a localizer checkpoint of tools/train_loc.py, not a detector: give a detector checkpoint of tools/train_det.py, "
     "such as output/<det run>/model_final.pth"),
], ids=["imagenet-classifier", "cifar-classifier", "localizer"])
def test_a_checkpoint_of_another_task_is_named_as_such(tmp_path, meta, what):
    """Loaded as a detector, it reported backbone.body.conv1.weight missing from the file."""
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(8, 3, 7, 7)}, "meta": {**meta, "num_classes": 2},
                "config": "model:\n  backbone:\n    depth: 18\n"}, path)
    assert fit_error(str(path), []) == f"{path} is {what.format(path=path)}"
    model = build_model(load_detection_config(SHAPES, TINY_DETECTOR), 3, backbone_weights=False)
    with pytest.raises(UserError) as error:  # model.weights of train_det
        load_weights_to_fine_tune(model, str(path), CategoryMap.identity(3))
    assert str(error.value) == f"{path} is {what.format(path=path)}"


def test_an_unconverted_torchvision_detector_points_to_the_converter(tmp_path):
    """It was told to set model.num_classes, which led to a second error (tensors missing from the file)."""
    path = tmp_path / "fasterrcnn.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7), "rpn.head.conv.0.0.weight": torch.zeros(1),
                "roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 16)}, path)
    for overrides in ([], ["model.num_classes=3"]):
        assert fit_error(str(path), overrides) == (
            f"{path} holds a torchvision detector (its names, such as roi_heads.box_predictor.cls_score.weight): "
            f"convert it first with python tools/convert_weights.py --from torchvision --in {path} --out "
            f"<converted>.pth, and give the converted file")


def saved_run(folder, overrides) -> str:
    """model_final.pth of a run of configs/shapes.yaml with ``overrides``, keeping its config as training does."""
    cfg = load_detection_config(SHAPES, TINY_DETECTOR + overrides + [f"output_dir={folder}"])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model_final.pth")
    torch.save({"model": build_model(cfg, 3, backbone_weights=False).state_dict(),
                "meta": {"num_classes": 3, "task": "detection"}, "config": config_to_text(cfg)}, path)
    save_config(cfg, os.path.join(folder, "config.yaml"))
    return path


def test_a_runs_weights_without_its_config_say_which_keys_differ_and_which_config_to_give(tmp_path):
    weights = saved_run(str(tmp_path / "run"), ["model.fpn.out_channels=48"])
    message = fit_error(weights, ["model.backbone.base_width=8", "model.weights=other.pth"])
    assert message.startswith(f"{weights} does not fit the model of this config: backbone.body.conv1.weight: "
                              f"file [16, 3, 7, 7] vs model [8, 3, 7, 7]; ")
    # model.weights differs too, but shapes no tensor: only the keys that do are named.
    assert message.endswith(f"; this config changed model.backbone.base_width: 16 -> 8, model.fpn.out_channels: "
                            f"48 -> 32 from its run's: give --cfg {tmp_path / 'run' / 'config.yaml'}")
    # The file moved away from its run folder: the config of the output_dir it names.
    os.rename(weights, tmp_path / "moved.pth")
    assert fit_error(str(tmp_path / "moved.pth"), ["model.fpn.out_channels=40"]).endswith(
        f"; this config changed model.fpn.out_channels: 48 -> 40 from its run's: give --cfg "
        f"{tmp_path / 'run' / 'config.yaml'}")


def test_fine_tuning_from_a_run_names_the_model_keys_that_differ(tmp_path):
    weights = saved_run(str(tmp_path / "run"), [])
    cfg = load_detection_config(SHAPES, TINY_DETECTOR + ["model.roi_head.fc_dim=96"])
    with pytest.raises(UserError) as error:
        load_weights_to_fine_tune(build_model(cfg, 3, backbone_weights=False), weights, CategoryMap.identity(3),
                                  cfg=cfg)
    assert str(error.value).endswith(f"; this config changed model.roi_head.fc_dim: 64 -> 96 from its run's: give "
                                     f"--cfg {tmp_path / 'run' / 'config.yaml'}")
