"""Detectors without a config file: each shipped detection config as a function, torchvision style.

    >>> import numpy as np
    >>> from detection import faster_rcnn_r18_fpn_small
    >>> from detection.predictor import Predictor
    >>> model = faster_rcnn_r18_fpn_small(num_classes=3)   # random weights, to try the API
    >>> predictor = Predictor(model)                        # eval mode, the recipe's test-time resize
    >>> image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    >>> detections = predictor(image)                       # boxes in the image's own pixels
    >>> sorted(detections)
    ['boxes', 'category_ids', 'class_names', 'labels', 'scores']
    >>> bool((detections["boxes"][:, 2] <= 160).all() and (detections["labels"] <= 3).all())
    True

Settings are changed with the config's own keys, as keyword arguments named after their section
(``model``, ``input``, ``test``) holding nested dicts, or as dotted names; both are checked as a
config override is, so a misspelt key stops with the closest valid one:

    >>> from detection import faster_rcnn_r50_fpn
    >>> model = faster_rcnn_r50_fpn(num_classes=3, backbone_weights=None,
    ...                             model={"rpn": {"nms_thresh": 0.6}}, test={"score_thresh": 0.5})
    >>> model.rpn.nms_thresh, model.roi_heads.score_thresh
    (0.6, 0.5)
    >>> model = faster_rcnn_r50_fpn(num_classes=3, backbone_weights=None, **{"model.rpn.nms_thresh": 0.6})
    >>> faster_rcnn_r50_fpn(num_classes=3, backbone_weights=None, model={"rpn": {"nms_thres": 0.6}})
    Traceback (most recent call last):
    resnet_engine.config.ConfigError: unknown key 'model.rpn.nms_thres' in override 'model.rpn.nms_thres=0.6' (did you mean model.rpn.nms_thresh?)

Each builder makes what ``build_model`` makes for its config (same modules, parameter names and
shapes, same outputs): it reads the config file itself, shipped with the toolkit (the configs/
folder, installed as the package ``resnet_configs``), so the two cannot drift. ``num_classes`` counts the
foreground classes (torchvision's builders count the background too: their 91 is 90 here).
``weights`` is a detector file, a checkpoint of this toolkit or a converted torchvision detector
(tools/convert_weights.py), from which ``num_classes`` and the category ids are read; with a
``num_classes`` other than the file's, the detector starts from the file to be fine-tuned, as
``model.weights`` starts a training run: everything loads but the classifier and the per-class box
regressor, which keep their initialization (one log line names them), and the category ids are
1..num_classes;
``backbone_weights`` are the ImageNet weights of the backbone (``model.backbone.weights``: a
file, ``torchvision:NAME`` or ``timm:NAME``; None starts from random weights), not loaded when
``weights`` is given; by default those the config names. The model comes back in training mode, on the CPU, with ``config`` (the
resolved detection config it was built from) and ``category_map`` (its category ids and names),
which ``Predictor(model)`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig

from resnet_engine.config import ConfigError

from .config import load_detection_config
from .data.coco import CategoryMap
from .modeling.build import build_model
from .modeling.faster_rcnn import FasterRCNN
from .weights import load_detector, load_weights_to_fine_tune, read_detector_weights

# The sections a built detector reads; solver and data settings belong to a training run.
DETECTOR_SECTIONS = ("model", "input", "test")
# Keys that the builders' own arguments set.
ARGUMENT_KEYS = {"model.num_classes": "num_classes", "model.weights": "weights",
                 "model.backbone.weights": "backbone_weights"}


class AsConfigured:
    """The default of ``backbone_weights``: what the builder's config names (``model.backbone.weights``)."""

    def __repr__(self) -> str:
        return "AS_CONFIGURED"


AS_CONFIGURED = AsConfigured()


def faster_rcnn_r50_c4(*, num_classes: int | None = None, weights: str | None = None,
                       backbone_weights: str | None | AsConfigured = AS_CONFIGURED, **overrides: Any) -> FasterRCNN:
    """The paper's C4 Faster R-CNN on ResNet-50 (configs/coco_r50.yaml): res5 runs on each region."""
    return build_detector("coco_r50.yaml", num_classes, weights, backbone_weights, overrides)


def faster_rcnn_r101_c4(*, num_classes: int | None = None, weights: str | None = None,
                        backbone_weights: str | None | AsConfigured = AS_CONFIGURED, **overrides: Any) -> FasterRCNN:
    """The paper's COCO detector, C4 Faster R-CNN on ResNet-101 (configs/coco_r101.yaml)."""
    return build_detector("coco_r101.yaml", num_classes, weights, backbone_weights, overrides)


def faster_rcnn_r152_c4(*, num_classes: int | None = None, weights: str | None = None,
                        backbone_weights: str | None | AsConfigured = AS_CONFIGURED, **overrides: Any) -> FasterRCNN:
    """The paper's C4 Faster R-CNN on ResNet-152 (configs/coco_r152.yaml)."""
    return build_detector("coco_r152.yaml", num_classes, weights, backbone_weights, overrides)


def faster_rcnn_r50_fpn(*, num_classes: int | None = None, weights: str | None = None,
                        backbone_weights: str | None | AsConfigured = AS_CONFIGURED, **overrides: Any) -> FasterRCNN:
    """Faster R-CNN with FPN on ResNet-50 (configs/coco_r50_fpn.yaml), the architecture of torchvision's
    fasterrcnn_resnet50_fpn; its converted weights give torchvision's detections with
    ``model={"rpn": {"min_size": 0.001}}`` (configs/tv_fasterrcnn_r50_fpn.yaml)."""
    return build_detector("coco_r50_fpn.yaml", num_classes, weights, backbone_weights, overrides)


def faster_rcnn_r101_fpn(*, num_classes: int | None = None, weights: str | None = None,
                         backbone_weights: str | None | AsConfigured = AS_CONFIGURED, **overrides: Any) -> FasterRCNN:
    """Faster R-CNN with FPN on ResNet-101 (configs/coco_r101_fpn.yaml)."""
    return build_detector("coco_r101_fpn.yaml", num_classes, weights, backbone_weights, overrides)


def faster_rcnn_r18_fpn_small(*, num_classes: int | None = None, weights: str | None = None,
                              backbone_weights: str | None | AsConfigured = AS_CONFIGURED,
                              **overrides: Any) -> FasterRCNN:
    """The embedded default (configs/shapes.yaml): a half-width ResNet-18 FPN for images of about 240
    pixels, trained from scratch on a CPU in minutes."""
    return build_detector("shapes.yaml", num_classes, weights, backbone_weights, overrides)


def build_detector(config_name: str, num_classes: int | None, weights: str | None,
                   backbone_weights: str | None | AsConfigured, overrides: Mapping[str, Any]) -> FasterRCNN:
    """The detector of the shipped config ``config_name`` with the user's ``overrides``, through the
    config builder."""
    cfg = detector_config(config_name, num_classes, backbone_weights, overrides)
    # Another class count than the file's: fine-tuning, as model.weights does in training (the file is
    # read twice, once for its count).
    if weights and num_classes and num_classes != recorded_class_count(weights):
        model = build_model(cfg, num_classes, backbone_weights=False)
        category_map = CategoryMap.identity(num_classes)
        load_weights_to_fine_tune(model, weights, category_map, cfg=cfg)
    elif weights:
        model, category_map = load_detector(cfg, weights, torch.device("cpu"))
        model.train()  # as every freshly built module: the caller switches to eval()
    elif num_classes:
        model = build_model(cfg, num_classes, backbone_weights=bool(cfg.model.backbone.weights))
        category_map = CategoryMap.identity(num_classes)
    else:
        raise ConfigError("give num_classes= (the number of foreground classes), or weights= a detector file "
                          "that records it")
    cfg.model.num_classes = len(category_map.category_ids)
    model.config, model.category_map = cfg, category_map
    return model


def detector_config(config_name: str, num_classes: int | None, backbone_weights: str | None | AsConfigured,
                    overrides: Mapping[str, Any]) -> DictConfig:
    """The shipped config ``config_name``, then the builder's arguments and the user's ``overrides``,
    each checked as a command-line override is."""
    user = flatten_settings(overrides)
    for key in user:
        if key in ARGUMENT_KEYS:
            raise ConfigError(f"{key} is an argument of the builder: give {ARGUMENT_KEYS[key]} instead")
    settings = {"model.num_classes": num_classes or 0, **user}
    if not isinstance(backbone_weights, AsConfigured):
        settings["model.backbone.weights"] = backbone_weights
    cfg = load_detection_config(config_name, [f"{key}={as_yaml(value, key)}" for key, value in settings.items()])
    for key in user:  # known keys by now: the config load reports misspelt ones with a suggestion
        if key.split(".")[0] not in DETECTOR_SECTIONS:
            raise ConfigError(f"{key} is not a detector setting: the builders take model, input and test keys "
                              f"(training settings go in a config file)")
    return cfg


def flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"rpn": {"nms_thresh": 0.6}}} and {"model.rpn.nms_thresh": 0.6} -> the latter."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def as_yaml(value: Any, key: str) -> str:
    """``value`` as the right-hand side of a ``key=value`` override (YAML, as on the command line)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, np.generic):  # numpy scalars, which YAML does not know
        value = value.item()
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=2**31)
    except yaml.YAMLError:
        raise ConfigError(f"{key}={value!r}: give a number, a string, a bool, None or a list of them") from None
    return text.strip().removesuffix("...").strip()


def recorded_class_count(weights: str) -> int | None:
    """The number of classes of the detector file ``weights``: its metadata's, else its classifier's
    rows less the background's (None for a file without either, which loading reports)."""
    state, meta = read_detector_weights(weights)
    if meta.get("num_classes"):
        return int(meta["num_classes"])
    classifier = state.get("roi_heads.predictor.cls_score.weight")
    return classifier.shape[0] - 1 if classifier is not None else None


def built_detector_settings(model: torch.nn.Module) -> tuple[DictConfig, CategoryMap]:
    """The config and category map a builder of this module recorded on ``model``."""
    if not isinstance(getattr(model, "config", None), DictConfig) or not hasattr(model, "category_map"):
        raise TypeError("this model was not made by a builder of detection.builders (faster_rcnn_r50_fpn, ...): "
                        "give its config and weights file, Predictor(cfg, weights)")
    return model.config, model.category_map
