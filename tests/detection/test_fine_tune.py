"""Fine-tuning a detector file into a config of other classes: what fits is loaded bit for bit, the
classifier and the per-class box regressor start afresh (or keep the rows of classes shared by name),
one log line says so, and any other difference is still an error naming the key."""

import json
import logging
import os

import pytest
import torch

from detection.config import load_detection_config
from detection.convert import convert_file
from detection.data.coco import CategoryMap, load_coco
from detection.modeling.build import build_model
from detection.weights import CLASS_KEYS, load_weights_to_fine_tune
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR

SHAPES = os.path.join(ROOT, "configs", "shapes.yaml")
SOURCE_NAMES = ["circle", "square", "triangle", "star", "cross"]  # the shapes set's classes, labels 1..5
# A custom dataset: non-contiguous ids, 4 classes, two of them (circle, square) also in the source.
CUSTOM_CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "circle"},
                     {"id": 20, "name": "cat"}]


def tiny_cfg(extra=()):
    return load_detection_config(SHAPES, TINY_DETECTOR + list(extra))


@pytest.fixture(scope="module")
def source_file(tmp_path_factory):
    """A 5-class tiny detector saved as the trainer saves one (its class names in the metadata), every
    float tensor moved off its initial value as training would (BN statistics, zero biases)."""
    torch.manual_seed(11)
    model = build_model(tiny_cfg(), len(SOURCE_NAMES), backbone_weights=False)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    path = tmp_path_factory.mktemp("source") / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": {"num_classes": 5, "category_ids": [1, 2, 3, 4, 5],
                                                      "class_names": SOURCE_NAMES}}, path)
    return str(path), {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture
def custom_categories(tmp_path) -> CategoryMap:
    """The category map of a custom COCO json, read as training reads it."""
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": CUSTOM_CATEGORIES}))
    return CategoryMap.from_coco(load_coco(str(path)))


def fresh_model(num_classes: int, extra=()):
    """A detector of the target config, initialized with another seed than the source, and a copy of
    its initial tensors."""
    torch.manual_seed(22)
    model = build_model(tiny_cfg(extra), num_classes, backbone_weights=False)
    return model, {key: value.clone() for key, value in model.state_dict().items()}


def rows(tensor: torch.Tensor, label: int, per_class: int) -> torch.Tensor:
    return tensor[label * per_class:(label + 1) * per_class]


def test_another_class_count_keeps_the_rest_and_reinitializes_the_class_layers(source_file, custom_categories,
                                                                                caplog):
    path, source = source_file
    assert custom_categories.category_ids == [3, 7, 12, 20]
    model, initial = fresh_model(4)
    with caplog.at_level(logging.INFO, logger="detection.weights"):
        load_weights_to_fine_tune(model, path, custom_categories)
    loaded = model.state_dict()
    class_independent = [key for key in loaded if key not in CLASS_KEYS]
    assert len(class_independent) > 100
    floats = [key for key in class_independent if loaded[key].is_floating_point()]
    assert all(not torch.equal(initial[key], source[key]) for key in floats)  # so the check below can fail
    assert all(torch.equal(loaded[key], source[key]) for key in class_independent)
    # The class layers: the model's own initialization, with rows for 4 classes and the background.
    assert loaded["roi_heads.predictor.cls_score.weight"].shape[0] == 5
    assert loaded["roi_heads.predictor.bbox_pred.weight"].shape[0] == 5 * 4
    assert all(torch.equal(loaded[key], initial[key]) for key in CLASS_KEYS)
    messages = [r.getMessage() for r in caplog.records if r.name == "detection.weights"]
    assert messages == [f"{path}: a detector of 5 classes fine-tuned to 4: re-initialized "
                        f"roi_heads.predictor.cls_score.weight, roi_heads.predictor.cls_score.bias, "
                        f"roi_heads.predictor.bbox_pred.weight, roi_heads.predictor.bbox_pred.bias"]


def test_rows_of_classes_shared_by_name_and_of_the_background_are_copied(source_file, custom_categories, caplog):
    path, source = source_file
    model, initial = fresh_model(4)
    with caplog.at_level(logging.INFO, logger="detection.weights"):
        load_weights_to_fine_tune(model, path, custom_categories, keep_classes_by_name=True)
    loaded = model.state_dict()
    # model labels 1..4 = square, dog, circle, cat; source labels: circle 1, square 2.
    copied = {0: 0, 1: 2, 3: 1}
    for layer, per_class in (("roi_heads.predictor.cls_score", 1), ("roi_heads.predictor.bbox_pred", 4)):
        for param in ("weight", "bias"):
            key = f"{layer}.{param}"
            for label in range(5):
                expected = rows(source[key], copied[label], per_class) if label in copied else \
                    rows(initial[key], label, per_class)
                assert torch.equal(rows(loaded[key], label, per_class), expected), (key, label)
            if param == "weight":  # the copied rows differ from the initialization they replace
                assert not torch.equal(rows(initial[key], 1, per_class), rows(source[key], 2, per_class))
    message = [r.getMessage() for r in caplog.records if r.name == "detection.weights"]
    assert len(message) == 1 and message[0].endswith(
        "re-initialized except the rows of the background and of the 2 classes of the same name (square, circle)")


def test_same_classes_load_unchanged_and_other_names_in_the_same_count_warn(source_file, caplog):
    path, source = source_file
    model, _ = fresh_model(5)
    load_weights_to_fine_tune(model, path, CategoryMap([1, 2, 3, 4, 5], SOURCE_NAMES))
    assert all(torch.equal(value, source[key]) for key, value in model.state_dict().items())

    renamed = ["a", "b", "c", "d", "e"]
    with caplog.at_level(logging.WARNING, logger="detection.weights"):
        load_weights_to_fine_tune(model, path, CategoryMap([1, 2, 3, 4, 5], renamed))
    assert all(torch.equal(value, source[key]) for key, value in model.state_dict().items())
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} was trained on the classes circle, square, triangle, star, cross and this dataset has a, b, c, d, "
        f"e: their rows are loaded by position (set model.weights_keep_classes_by_name=true to match them by name)"]


def test_a_file_without_class_names_cannot_keep_classes_by_name(tmp_path, source_file):
    _, source = source_file
    path = tmp_path / "nameless.pth"
    torch.save({"model": source, "meta": {"num_classes": 5}}, path)
    model, _ = fresh_model(4)
    with pytest.raises(UserError, match=rf"^{path} does not record the names of its classes, which "
                                        r"model.weights_keep_classes_by_name=true matches: set it to false"):
        load_weights_to_fine_tune(model, str(path), CategoryMap([1, 2, 3, 4], list("abcd")), True)


def test_another_difference_than_the_classes_is_still_an_error(source_file):
    path, _ = source_file
    model, _ = fresh_model(4, ["model.backbone.base_width=8"])
    with pytest.raises(UserError) as error:
        load_weights_to_fine_tune(model, path, CategoryMap([1, 2, 3, 4], list("abcd")))
    message = str(error.value)
    assert message.startswith(f"{path} does not fit the model of this config: backbone.")
    assert "roi_heads.predictor" not in message  # the class layers were fitted; the width is the problem
    assert "\n" not in message


def test_converted_torchvision_detector_fine_tunes_into_an_fpn_config_of_5_classes(tmp_path, caplog):
    import torchvision

    torch.manual_seed(5)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                     num_classes=91)
    with torch.no_grad():  # off the initial values that our initialization shares (BN statistics, zero biases)
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    convert_file(str(tmp_path / "tv.pth"), str(tmp_path / "converted.pth"))
    reference_state = reference.state_dict()
    del reference

    cfg = load_detection_config(os.path.join(ROOT, "configs", "coco_r50_fpn.yaml"),
                                [f"model.weights={tmp_path / 'converted.pth'}"])
    torch.manual_seed(6)
    model = build_model(cfg, 5, backbone_weights=False)
    model_before = {key: value.clone() for key, value in model.state_dict().items()}
    initial = {key: model_before[key] for key in CLASS_KEYS}
    with caplog.at_level(logging.INFO, logger="detection.weights"):
        load_weights_to_fine_tune(model, cfg.model.weights, CategoryMap.identity(5))
    loaded = model.state_dict()
    names = {"roi_heads.predictor.": "roi_heads.box_predictor.", "rpn.head.conv.": "rpn.head.conv.0.0."}

    def torchvision_name(key):
        for ours, theirs in names.items():
            if key.startswith(ours):
                return theirs + key[len(ours):]
        return key

    class_independent = [key for key in loaded if key not in CLASS_KEYS]
    assert len(class_independent) > 250
    assert not any(torch.equal(model_before[key], loaded[key]) for key in class_independent)
    assert all(torch.equal(loaded[key], reference_state[torchvision_name(key)]) for key in class_independent)
    assert loaded["roi_heads.predictor.cls_score.weight"].shape == (6, 1024)
    assert loaded["roi_heads.predictor.bbox_pred.weight"].shape == (24, 1024)
    assert all(torch.equal(loaded[key], initial[key]) for key in CLASS_KEYS)
    assert [r.getMessage() for r in caplog.records if r.name == "detection.weights"] == [
        f"{tmp_path / 'converted.pth'}: a detector of 90 classes fine-tuned to 5: re-initialized "
        "roi_heads.predictor.cls_score.weight, roi_heads.predictor.cls_score.bias, "
        "roi_heads.predictor.bbox_pred.weight, roi_heads.predictor.bbox_pred.bias"]


def test_keep_classes_by_name_needs_a_weights_file():
    with pytest.raises(ConfigError, match=r"^model.weights_keep_classes_by_name=true keeps class rows of a detector "
                                          r"file: give it as model.weights=PATH, or leave the key out$"):
        tiny_cfg(["model.weights_keep_classes_by_name=true"])
    with pytest.raises(ConfigError, match="'model.weights_keep_classes_by_name'"):
        tiny_cfg(["model.weights=w.pth", "model.weights_keep_classes_by_name=maybe"])
