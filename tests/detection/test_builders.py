"""The config-free builders make the config builder's detector, take the config's keys and checks,
load detector files, and feed the Predictor."""

import doctest
import inspect
import logging

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import detection
import detection.builders
from detection.builders import detector_config, faster_rcnn_r18_fpn_small, faster_rcnn_r50_fpn
from detection.config import load_detection_config
from detection.convert import convert_file
from detection.modeling.build import build_model
from detection.predictor import Predictor
from detection.weights import CLASS_KEYS
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError
from tests.detection.tv_reference import calibrated_torchvision_detector, shapes_image

NUM_CLASSES = 3
# Few proposals keep res5 on every region of the C4 detectors quick.
FEW_PROPOSALS = {"model.rpn.post_nms_topk_test": 8}

BUILDERS_AND_CONFIGS = [
    ("faster_rcnn_r50_c4", "coco_r50.yaml"),
    ("faster_rcnn_r101_c4", "coco_r101.yaml"),
    ("faster_rcnn_r152_c4", "coco_r152.yaml"),
    ("faster_rcnn_r50_fpn", "coco_r50_fpn.yaml"),
    ("faster_rcnn_r101_fpn", "coco_r101_fpn.yaml"),
    ("faster_rcnn_r18_fpn_small", "shapes.yaml"),
]


def detector_sections(cfg) -> dict:
    return {section: OmegaConf.to_container(cfg[section]) for section in ("model", "input", "test")}


def file_config(repo_root, config: str):
    overrides = [f"model.num_classes={NUM_CLASSES}"] + [f"{k}={v}" for k, v in FEW_PROPOSALS.items()]
    return load_detection_config(f"{repo_root}/configs/{config}", overrides)


@pytest.mark.parametrize(("builder_name", "config"), BUILDERS_AND_CONFIGS)
def test_builder_has_the_config_files_settings_and_modules(builder_name, config, repo_root):
    """Every setting of the model, input and test sections as the file gives it; the modules and
    parameter shapes of build_model (on the meta device: no memory, no initialization)."""
    builder = getattr(detection, builder_name)  # exported from the package
    file_cfg = file_config(repo_root, config)
    default = inspect.signature(builder).parameters["backbone_weights"].default
    assert detector_config(config, NUM_CLASSES, default, FEW_PROPOSALS).model.backbone.weights == \
        file_cfg.model.backbone.weights  # the builder's default weights are its config's
    file_cfg.model.backbone.weights = None  # no download: the weights' names are compared just above
    with torch.device("meta"):
        ours = builder(num_classes=NUM_CLASSES, backbone_weights=None, **FEW_PROPOSALS)
        reference = build_model(file_cfg, NUM_CLASSES)
    assert detector_sections(ours.config) == detector_sections(file_cfg)
    assert repr(ours) == repr(reference)
    assert ({k: v.shape for k, v in ours.state_dict().items()}
            == {k: v.shape for k, v in reference.state_dict().items()})


def test_the_papers_full_config_is_the_r101_builder_with_its_switches(repo_root):
    file_cfg = file_config(repo_root, "coco_r101_paper.yaml")
    file_cfg.model.backbone.weights = None
    with torch.device("meta"):
        ours = detection.faster_rcnn_r101_c4(
            num_classes=NUM_CLASSES, backbone_weights=None, **FEW_PROPOSALS,
            model={"roi_head": {"global_context": True, "batch_size_per_image": 64, "pooler": "roi_pool",
                                "smooth_l1_beta": 1.0},
                   "rpn": {"boundary_thresh": 0, "min_size": 16}},
            test={"box_refinement": True, "box_voting": True, "scales": [200, 400, 600, 800, 1000], "rpn_scale": 600})
    assert detector_sections(ours.config) == detector_sections(file_cfg)


def calm_residual_branches(model: torch.nn.Module) -> None:
    """Scale each bottleneck's last norm down: random deep ResNet activations otherwise grow until no
    proposal is left to compare."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".bn3"):
                module.weight.mul_(0.1)


# One builder per recipe (the depths differ only in model.backbone.depth, compared above).
@pytest.mark.parametrize(("builder_name", "config"), [BUILDERS_AND_CONFIGS[0], BUILDERS_AND_CONFIGS[3],
                                                      BUILDERS_AND_CONFIGS[5]])
def test_builder_gives_the_config_builders_weights_and_detections(builder_name, config, repo_root):
    file_cfg = file_config(repo_root, config)
    file_cfg.model.backbone.weights = None
    torch.manual_seed(0)
    ours = getattr(detection, builder_name)(num_classes=NUM_CLASSES, backbone_weights=None, **FEW_PROPOSALS)
    torch.manual_seed(0)
    reference = build_model(file_cfg, NUM_CLASSES)
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    assert all(torch.equal(ours_state[k], reference_state[k]) for k in reference_state)

    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    outputs = []
    for model in (ours, reference):
        calm_residual_branches(model)
        with torch.no_grad():
            outputs.append(model.eval()([{"image": image}])[0])
    assert len(outputs[1]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(outputs[0][key], outputs[1][key])


def test_overrides_nested_or_dotted_equal_config_overrides(repo_root):
    overrides = ["model.rpn.nms_thresh=0.6", "test.score_thresh=0.5", "input.min_size_test=640",
                 "model.anchors.aspect_ratios=[0.5, 1.0]", f"model.num_classes={NUM_CLASSES}"]
    file_cfg = load_detection_config(f"{repo_root}/configs/coco_r50_fpn.yaml", overrides)
    nested = faster_rcnn_r50_fpn(num_classes=NUM_CLASSES, backbone_weights=None,
                                 model={"rpn": {"nms_thresh": 0.6}, "anchors": {"aspect_ratios": (0.5, 1.0)}},
                                 test={"score_thresh": 0.5}, input={"min_size_test": 640})
    dotted = faster_rcnn_r50_fpn(num_classes=NUM_CLASSES, backbone_weights=None,
                                 **{"model.rpn.nms_thresh": 0.6, "model.anchors.aspect_ratios": [0.5, 1.0],
                                    "test.score_thresh": 0.5, "input.min_size_test": 640})
    file_cfg.model.backbone.weights = None
    assert detector_sections(nested.config) == detector_sections(dotted.config) == detector_sections(file_cfg)
    # The values reach the modules: two aspect ratios make two anchors per position.
    assert nested.rpn.nms_thresh == 0.6 and nested.roi_heads.score_thresh == 0.5
    assert nested.rpn.head.cls_logits.out_channels == 2


def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_detection_config(None, overrides)
    return str(caught.value)


@pytest.mark.parametrize(("settings", "override"), [
    ({"model": {"rpn": {"nms_thres": 0.6}}}, "model.rpn.nms_thres=0.6"),
    ({"test": {"score_thresh": 2}}, "test.score_thresh=2"),
    ({"model": {"backbone": {"norm": "batchnorm"}}}, "model.backbone.norm=batchnorm"),
    ({"input.min_size_test": [800]}, "input.min_size_test=[800]"),
])
def test_bad_settings_get_the_config_override_error(settings, override):
    with pytest.raises(ConfigError) as caught:
        faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, **settings)
    assert str(caught.value) == config_error([override])
    assert "did you mean model.rpn.nms_thresh?" in config_error(["model.rpn.nms_thres=0.6"])


def test_settings_the_builders_do_not_take():
    with pytest.raises(ConfigError, match="solver.base_lr is not a detector setting"):
        faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, solver={"base_lr": 0.1})
    with pytest.raises(ConfigError, match="model.num_classes is an argument of the builder: give num_classes"):
        faster_rcnn_r18_fpn_small(**{"model.num_classes": 3})
    with pytest.raises(ConfigError, match="model.backbone.weights is an argument of the builder: give backbone_weights"):
        faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, model={"backbone": {"weights": "x.pth"}})
    with pytest.raises(ConfigError, match="give num_classes"):
        faster_rcnn_r18_fpn_small()
    with pytest.raises(ConfigError, match="model.rpn.nms_thresh=<object .*>: give a number"):
        faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, model={"rpn": {"nms_thresh": object()}})
    # numpy scalars and tuples are values too
    model = faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, model={"rpn": {"nms_thresh": np.float32(0.25)}},
                                      input={"pixel_std": (57.0, 51.0, 60.0)})
    assert model.rpn.nms_thresh == 0.25
    assert torch.equal(model.pixel_std.flatten(), torch.tensor([57.0 / 255, 51.0 / 255, 60.0 / 255]))


def test_weights_from_a_checkpoint_of_this_toolkit(tmp_path):
    torch.manual_seed(0)
    trained = faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES)
    meta = {"num_classes": NUM_CLASSES, "category_ids": [5, 7, 9], "class_names": ["cat", "dog", "owl"]}
    torch.save({"model": trained.state_dict(), "meta": meta}, tmp_path / "model_final.pth")

    torch.manual_seed(1)  # another initialization, which the file's weights must replace
    loaded = faster_rcnn_r18_fpn_small(weights=str(tmp_path / "model_final.pth"))
    assert loaded.training
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in trained.state_dict().items())
    assert loaded.category_map.category_ids == [5, 7, 9] and loaded.category_map.names == ["cat", "dog", "owl"]
    assert loaded.config.model.num_classes == NUM_CLASSES

    same_count = faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, weights=str(tmp_path / "model_final.pth"))
    assert all(torch.equal(value, same_count.state_dict()[key]) for key, value in trained.state_dict().items())
    assert same_count.category_map.names == ["cat", "dog", "owl"]  # the file's classes, not fine-tuned
    image = shapes_image(3, 120, 160)
    detections = Predictor(loaded)(image)
    labels = detections["labels"]
    assert len(labels) > 0 and np.array_equal(detections["category_ids"], np.array([5, 7, 9])[labels - 1])


@pytest.fixture(scope="module")
def converted_torchvision(tmp_path_factory):
    """torchvision's FasterRCNN on a ResNet-18 FPN (90 classes) and its file converted to this
    toolkit's names."""
    folder = tmp_path_factory.mktemp("torchvision")
    reference_model = calibrated_torchvision_detector(160, 320, depth=18)
    torch.save(reference_model.state_dict(), folder / "tv.pth")
    convert_file(str(folder / "tv.pth"), str(folder / "converted.pth"))
    return reference_model, str(folder / "converted.pth")


def test_weights_of_a_converted_torchvision_detector_give_its_detections(converted_torchvision):
    """The builder's detector (its depth and torchvision's proposal size limit as overrides) detects
    what torchvision does."""
    reference_model, converted = converted_torchvision
    image = torch.from_numpy(shapes_image(7, 160, 224)).permute(2, 0, 1).contiguous()
    with torch.no_grad():
        reference = reference_model([image.float() / 255])[0]

    model = faster_rcnn_r50_fpn(weights=converted,
                                model={"backbone": {"depth": 18}, "rpn": {"min_size": 0.001}},
                                input={"min_size_test": 160, "max_size_test": 320})
    with torch.no_grad():
        ours = model.eval()([{"image": image}])[0]
    assert len(reference["boxes"]) > 10
    assert torch.equal(ours["labels"], reference["labels"])
    assert (ours["boxes"] - reference["boxes"]).abs().max() <= 1e-3
    assert (ours["scores"] - reference["scores"]).abs().max() <= 1e-4
    assert model.category_map.category_ids == list(range(1, 91))


FINE_TUNE_MESSAGE = ("{path}: a detector of {before} classes fine-tuned to {after}: re-initialized "
                     "roi_heads.predictor.cls_score.weight, roi_heads.predictor.cls_score.bias, "
                     "roi_heads.predictor.bbox_pred.weight, roi_heads.predictor.bbox_pred.bias")


@pytest.fixture(scope="module")
def five_class_file(tmp_path_factory):
    """A 5-class detector of the small builder saved as training saves one, every float tensor moved off
    its initialization as training would: (path, its tensors as saved)."""
    torch.manual_seed(5)
    model = faster_rcnn_r18_fpn_small(num_classes=5)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    path = tmp_path_factory.mktemp("five") / "model_final.pth"
    meta = {"num_classes": 5, "category_ids": [1, 2, 3, 4, 5], "class_names": ["a", "b", "c", "d", "e"]}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return str(path), {key: value.clone() for key, value in model.state_dict().items()}


def assert_fine_tuned(model, file_state: dict, initial_state: dict, num_classes: int) -> None:
    """Every tensor but the class layers' is the file's; those are the builder's initialization, with
    rows for ``num_classes`` and the background."""
    loaded = model.state_dict()
    kept = [key for key in loaded if key not in CLASS_KEYS]
    assert len(kept) > 100 and all(torch.equal(loaded[key], file_state[key]) for key in kept)
    assert loaded["roi_heads.predictor.cls_score.weight"].shape[0] == num_classes + 1
    assert loaded["roi_heads.predictor.bbox_pred.weight"].shape[0] == 4 * (num_classes + 1)
    assert all(torch.equal(loaded[key], initial_state[key]) for key in CLASS_KEYS)


def test_num_classes_other_than_the_files_fine_tunes_from_it(five_class_file, caplog):
    path, saved = five_class_file
    torch.manual_seed(1)
    initial = faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES).state_dict()  # the same draws, without the file
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="detection.weights"):
        model = faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, weights=path)
    floats = [key for key in saved if key not in CLASS_KEYS and saved[key].is_floating_point()]
    assert not any(torch.equal(initial[key], saved[key]) for key in floats)  # so that the check can fail
    assert_fine_tuned(model, saved, initial, NUM_CLASSES)
    assert [r.getMessage() for r in caplog.records if r.name == "detection.weights"] == [
        FINE_TUNE_MESSAGE.format(path=path, before=5, after=NUM_CLASSES)]
    assert model.training and model.config.model.num_classes == NUM_CLASSES
    assert model.category_map.category_ids == [1, 2, 3]
    assert Predictor(model)(shapes_image(3, 120, 160))["labels"].max(initial=1) <= NUM_CLASSES


def test_a_converted_torchvision_detector_fine_tunes_to_other_classes(converted_torchvision, caplog):
    _, converted = converted_torchvision
    file_state = torch.load(converted, weights_only=True)["model"]
    settings = {"model": {"backbone": {"depth": 18}}, "backbone_weights": None}
    torch.manual_seed(2)
    initial = faster_rcnn_r50_fpn(num_classes=NUM_CLASSES, **settings).state_dict()
    torch.manual_seed(2)
    with caplog.at_level(logging.INFO, logger="detection.weights"):
        model = faster_rcnn_r50_fpn(num_classes=NUM_CLASSES, weights=converted, **settings)
    assert_fine_tuned(model, file_state, initial, NUM_CLASSES)
    assert [r.getMessage() for r in caplog.records if r.name == "detection.weights"] == [
        FINE_TUNE_MESSAGE.format(path=converted, before=90, after=NUM_CLASSES)]


def test_fine_tuning_still_refuses_weights_that_differ_otherwise(five_class_file):
    path, _ = five_class_file
    with pytest.raises(UserError) as caught:
        faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES, weights=path, model={"roi_head": {"fc_dim": 192}})
    assert str(caught.value).startswith(f"{path} does not fit the model of this config: roi_heads.box_head.")
    assert "file [256, " in str(caught.value) and "model [192, " in str(caught.value)


def test_predictor_of_a_built_detector_equals_its_forward():
    torch.manual_seed(0)
    model = faster_rcnn_r50_fpn(num_classes=NUM_CLASSES, backbone_weights=None,
                                input={"min_size_test": 128, "max_size_test": 192},
                                model={"rpn": {"post_nms_topk_test": 50}})
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    detections = Predictor(model)(image)
    assert not model.training

    # The test scale by hand: the shorter side 64 -> 128 (the longer, 160, stays under 192).
    resized = cv2.resize(image, (160, 128), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        expected = model([{"image": torch.from_numpy(resized).permute(2, 0, 1), "height": 64, "width": 80}])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert np.array_equal(detections[key], expected[key].numpy())
    assert np.array_equal(detections["category_ids"], detections["labels"])


def test_predictor_needs_a_built_detector_or_a_weights_file(repo_root):
    cfg = load_detection_config(f"{repo_root}/configs/shapes.yaml")
    with pytest.raises(TypeError, match="not made by a builder of detection.builders"):
        Predictor(build_model(cfg, NUM_CLASSES, backbone_weights=False))
    with pytest.raises(TypeError, match="loads its weights in its builder"):
        Predictor(faster_rcnn_r18_fpn_small(num_classes=NUM_CLASSES), "model_final.pth")
    with pytest.raises(TypeError, match="needs the detector file"):
        Predictor(cfg)


def test_docstring_examples_run():
    results = doctest.testmod(detection.builders, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 10 and results.failed == 0

