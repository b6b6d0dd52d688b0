"""Loading trained or converted detectors, fine-tuning one to another set of classes, and one readable
message when weights do not fit the config's model."""

from __future__ import annotations

import logging
import os
import warnings

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from backbones.weights import read_state_dict
from resnet_engine.checkpoint import CheckpointError, load_checkpoint
from resnet_engine.config import config_differences, config_from_text, config_to_text, task_named
from resnet_engine.errors import UserError

from .config import DetectionConfig
from .data.coco import CategoryMap
from .modeling.build import build_model
from .modeling.speed import optimize_for_inference

logger = logging.getLogger(__name__)

# The layers with one output (or four) per class: the classifier and the per-class box regressor, their
# rows in class order, row 0 (or 0..3) the background.
CLASS_LAYERS = {"roi_heads.predictor.cls_score": 1, "roi_heads.predictor.bbox_pred": 4}
CLASS_KEYS = tuple(f"{layer}.{param}" for layer in CLASS_LAYERS for param in ("weight", "bias"))
# Classes that PASCAL VOC and COCO name differently ({VOC name: COCO name}): keeping classes by name
# matches either spelling with the other, so that a COCO detector fine-tuned on VOC keeps its rows
# of the 20 classes the two sets share.
# The input keys of a network's training config: its normalization and padding are part of the network
# (they are not in its state dict), and it is always run with the ones it was trained with.
NETWORK_INPUT_KEYS = ("pixel_mean", "pixel_std", "format", "size_divisibility")
CLASS_NAME_ALIASES = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
                      "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}
# The prefix of torchvision's box predictor, which tools/convert_weights.py renames to roi_heads.predictor.
TORCHVISION_PREDICTOR = "roi_heads.box_predictor."
# Model keys that do not shape the network's tensors, or whose file value wins (its class count).
KEYS_BESIDE_THE_SHAPES = ("model.weights", "model.weights_keep_classes_by_name", "model.backbone.weights",
                          "model.num_classes", "model.labels_are_category_ids")


def read_detector_weights(path: str) -> tuple[dict, dict]:
    """(state dict, metadata) from a training checkpoint, model_final.pth or a converted file."""
    try:
        checkpoint = load_checkpoint(path)
        state, meta = checkpoint["model"], checkpoint.get("meta", {}) or {}
    except CheckpointError as error:
        if "no 'model' entry" not in str(error):
            raise
        state, meta = read_state_dict(path), {}
    check_detector_file(state, meta, path)
    return state, meta


def check_detector_file(state: dict, meta: dict, path: str) -> None:
    """A checkpoint of another task (meta.task) or an unconverted torchvision detector is named as such:
    loaded as a detector, either would only report missing tensors (or the class count it lacks)."""
    other = task_named(meta["task"]) if meta.get("task") not in (None, "detection") else None
    if other is not None:
        # An ImageNet classifier's network is a detector's backbone; a CIFAR one (meta.dataset) is not.
        backbone = (f" (a classifier's network starts a detector's backbone as model.backbone.weights={path})"
                    if other.name == "classification" and "wnids" in meta else "")
        raise UserError(f"{path} is a {other.model} checkpoint of {other.tool}, not a detector: give a detector "
                        f"checkpoint of tools/train_det.py, such as output/<det run>/model_final.pth{backbone}")
    if any(key.startswith(TORCHVISION_PREDICTOR) for key in state):
        raise UserError(f"{path} holds a torchvision detector (its names, such as {TORCHVISION_PREDICTOR}cls_score."
                        f"weight): convert it first with python tools/convert_weights.py --from torchvision --in "
                        f"{path} --out <converted>.pth, and give the converted file")


def saved_config_text(path: str) -> str:
    """The training config a checkpoint keeps ("" for files without one, such as converted weights).
    The file is memory-mapped, so that reading the config does not read the weights."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable here: loading the weights next names the problem
        return ""
    return state.get("config", "") if isinstance(state, dict) else ""


def saved_input_section(path: str):
    """The ``input`` section of the training config ``path`` keeps ({} without one, or unreadable)."""
    text = saved_config_text(path)
    try:
        return (OmegaConf.create(text).get("input") or {}) if text else {}
    except OmegaConfBaseException:
        return {}


def with_own_input(cfg, path: str):
    """``cfg`` with the input normalization and padding that ``path``'s training config recorded, when they
    differ (with a warning naming them): a detector trained on BGR input with Caffe's means, run on the
    config's RGB input, would detect other boxes without a word."""
    saved = saved_input_section(path)
    own = {key: plain_value(saved[key]) for key in NETWORK_INPUT_KEYS if key in saved}
    given = {key: plain_value(getattr(cfg.input, key)) for key in own}
    differing = {key: value for key, value in own.items() if value != given[key]}
    if not differing:
        return cfg
    warnings.warn(f"{path} was trained with " + ", ".join(f"input.{key}={value}" for key, value in differing.items())
                  + ": the detector runs with them (the config's: "
                  + ", ".join(f"input.{key}={given[key]}" for key in differing) + ")", stacklevel=3)
    return OmegaConf.merge(cfg, {"input": differing})


def warn_if_other_test_scale(cfg, path: str) -> None:
    """The test scale is the config's choice, but a config other than the checkpoint's own (the
    default one, say) would run the detector at a scale it was never tested at without a word."""
    saved = saved_input_section(path)
    keys = [key for key in ("min_size_test", "max_size_test")
            if key in saved and plain_value(saved[key]) != plain_value(getattr(cfg.input, key))]
    if keys:
        warnings.warn(f"{path} was tested at " + ", ".join(f"input.{key}={plain_value(saved[key])}" for key in keys)
                      + "; it runs at the config's " + ", ".join(f"input.{key}={getattr(cfg.input, key)}" for key in keys)
                      + " (give the config.yaml of its run with --cfg, or override the keys)", stacklevel=3)


def plain_value(value):
    """A config value as plain Python (lists of floats compare with lists of ints as numbers)."""
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return list(value) if isinstance(value, tuple) else value


def load_detector(cfg, weights: str, device: torch.device):
    """Build the detector of ``cfg`` (with the input normalization ``weights`` was trained with) and load
    ``weights``; returns (model, category map)."""
    cfg = with_own_input(cfg, weights)
    state, meta = read_detector_weights(weights)
    num_classes = meta.get("num_classes") or cfg.model.num_classes
    if not num_classes:
        raise UserError(f"{weights} does not record its number of classes: set model.num_classes")
    model = build_model(cfg, num_classes, backbone_weights=False)
    check_weights_fit(model, state, weights, cfg)
    model.load_state_dict(state)
    category_ids = meta.get("category_ids") or list(range(1, num_classes + 1))
    names = meta.get("class_names") or [str(c) for c in category_ids]
    return model.to(device).eval(), CategoryMap(list(category_ids), list(names))


def load_fast_detector(cfg, weights: str, device: torch.device):
    """load_detector, then the inference fast path when ``test.fast`` is on (BN folded, channels_last)."""
    model, category_map = load_detector(cfg, weights, device)
    if cfg.test.fast:
        optimize_for_inference(model, winograd=cfg.test.winograd, winograd_bf16=cfg.test.winograd_bf16,
                               winograd_channels=cfg.test.winograd_channels,
                               winograd_min_pixels=cfg.test.winograd_min_pixels)
    return model, category_map


def load_weights_to_fine_tune(model, path: str, category_map: CategoryMap, keep_classes_by_name: bool = False,
                              cfg=None) -> None:
    """Start ``model``, a detector built for the training set's classes, from the detector file ``path``
    (model.weights), trained on the same classes or on others.

    Everything that fits is loaded. When the file's classes are another number, or another set with
    ``keep_classes_by_name``, the classifier and the per-class box regressor start from the model's
    own initialization, and with ``keep_classes_by_name`` their rows of the background and of the
    classes of the same name in both (the file's class_names) are copied; one log line says which.
    Any other tensor that does not fit is an error naming it (check_weights_fit; with ``cfg``, the config
    ``model`` was built from, also the model keys in which it differs from the file's).
    """
    state, meta = read_detector_weights(path)
    state = fit_class_layers(state, meta, model.state_dict(), category_map, keep_classes_by_name, path)
    check_weights_fit(model, state, path, cfg)
    model.load_state_dict(state)


def fit_class_layers(state: dict, meta: dict, own: dict, category_map: CategoryMap, keep_classes_by_name: bool,
                     source: str) -> dict:
    """``state`` with the class layers of ``own`` (the model's initialization), and the rows of classes
    shared by name copied when asked, if the file's classes differ from the model's; else as it is."""
    if not all(key in state and key in own for key in CLASS_KEYS) or \
            any(state[key].shape[1:] != own[key].shape[1:] for key in CLASS_KEYS):
        return state  # another difference than the classes (global context, the head's width): an error later
    file_count = state["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    model_count = own["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    model_names = list(category_map.names[:model_count])
    file_names = meta.get("class_names")
    if file_count == model_count and file_names == model_names:
        return state
    if file_count == model_count and not keep_classes_by_name:
        if file_names:  # a file without names (a converted one) is taken to have the dataset's classes
            logger.warning("%s was trained on the classes %s and this dataset has %s: their rows are loaded by "
                           "position (set model.weights_keep_classes_by_name=true to match them by name)",
                           source, short_list(file_names), short_list(model_names))
        return state
    fitted = {key: own[key].clone() for key in CLASS_KEYS}
    if keep_classes_by_name:
        if not file_names:
            raise UserError(f"{source} does not record the names of its classes, which "
                            f"model.weights_keep_classes_by_name=true matches: set it to false to re-initialize "
                            f"every class")
        kept = copy_rows_of_shared_classes(fitted, state, file_names, model_names)
        logger.info("%s: a detector of %d classes fine-tuned to %d: %s re-initialized except the rows of the "
                    "background and of the %d classes of the same name (%s)", source, file_count, model_count,
                    ", ".join(CLASS_KEYS), len(kept), short_list(kept))
    else:
        logger.info("%s: a detector of %d classes fine-tuned to %d: re-initialized %s", source, file_count,
                    model_count, ", ".join(CLASS_KEYS))
    return {**state, **fitted}


def canonical_class_name(name: str) -> str:
    """The name under which classes are matched: the COCO spelling of a VOC name (CLASS_NAME_ALIASES)."""
    return CLASS_NAME_ALIASES.get(name, name)


def copy_rows_of_shared_classes(fitted: dict, state: dict, file_names: list[str], model_names: list[str]) -> list[str]:
    """Copy the file's rows of the background and of each model class whose name the file has (its
    first class of that name, VOC and COCO spellings taken as one) into ``fitted``; returns the names
    of the classes copied."""
    file_label = {}
    for label, name in enumerate(file_names, start=1):
        file_label.setdefault(canonical_class_name(name), label)
    shared = [name for name in model_names if canonical_class_name(name) in file_label]
    pairs = [(0, 0)] + [(file_label[canonical_class_name(name)], label)
                        for label, name in enumerate(model_names, start=1) if canonical_class_name(name) in file_label]
    for layer, rows_per_class in CLASS_LAYERS.items():
        for param in ("weight", "bias"):
            key = f"{layer}.{param}"
            for source_label, label in pairs:
                fitted[key][label * rows_per_class:(label + 1) * rows_per_class] = \
                    state[key][source_label * rows_per_class:(source_label + 1) * rows_per_class]
    return shared


def short_list(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "") or "none"


def check_weights_fit(model, state: dict, source: str, cfg=None) -> None:
    """One readable message when a weights file does not match the config's model (``cfg``, when given, is
    compared with the config the file keeps)."""
    own = model.state_dict()
    mismatched = [f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    missing = [f"{k} missing from the file" for k in own if k not in state]
    unexpected = [f"{k} not in the model" for k in state if k not in own]
    if not (mismatched or missing or unexpected):
        return
    file_arch, config_arch = detector_arch(state), detector_arch(own)
    if file_arch and config_arch and file_arch != config_arch:
        named = {"fpn": "an FPN", "c4": "a C4"}
        raise UserError(f"{source} holds {named[file_arch]} detector and this config builds {named[config_arch]} "
                        f"one: set model.arch={file_arch}, or use the config the weights were trained with")
    hint = global_context_hint(state, own)
    details = (mismatched + missing + unexpected)[:3]
    raise UserError(f"{source} does not fit the model of this config{hint}: " + "; ".join(details)
                    + (own_config_hint(source, cfg) if cfg is not None else ""))


def own_config_hint(source: str, cfg) -> str:
    """"; this config changed KEY: file's -> this one's from its run's: give --cfg RUN/config.yaml" when the
    file keeps its training config and that config's model keys differ: the usual cause is a run's weights
    given without its config (the default one, or another run's)."""
    saved = saved_config_text(source)
    changes = [change for change in config_differences(with_defaults(saved), config_to_text(cfg))
               if change.startswith("model.") and change.split(":", 1)[0] not in KEYS_BESIDE_THE_SHAPES] if saved else []
    if not changes:
        return ""
    shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    return f"; this config changed {shown} from its run's: give --cfg {run_config_path(source, saved)}"


def with_defaults(saved_config: str) -> str:
    """A saved config with the keys added since at their defaults (as the run's own config.yaml loads), so
    that they do not read as differences; as it is when this version cannot read it."""
    try:
        return config_to_text(config_from_text(DetectionConfig, saved_config))
    except OmegaConfBaseException:
        return saved_config


def run_config_path(source: str, saved_config: str) -> str:
    """The config.yaml of the run that wrote ``source``: beside it (a run folder, even moved), else in the
    output_dir its config names."""
    beside = os.path.join(os.path.dirname(source), "config.yaml")
    if os.path.isfile(beside):
        return beside
    try:
        output_dir = (OmegaConf.create(saved_config).get("output_dir") or "") if saved_config else ""
    except OmegaConfBaseException:
        output_dir = ""
    return os.path.join(output_dir, "config.yaml") if output_dir else "<its output_dir>/config.yaml"


def detector_arch(state: dict) -> str | None:
    """"fpn" or "c4" from a detector's state-dict names: FPN has its lateral and output convolutions
    under backbone.fpn, C4 runs res5 in the box head."""
    if any(key.startswith("backbone.fpn.") for key in state):
        return "fpn"
    if any(key.startswith("roi_heads.box_head.res5.") for key in state):
        return "c4"
    return None


def global_context_hint(state: dict, own: dict) -> str:
    """Global context concatenates a whole-image feature to each region's: the classifier's input is
    twice as wide with it as without. Any other ratio is another difference (the box head's width)."""
    key = "roi_heads.predictor.cls_score.weight"
    if key not in state or key not in own:
        return ""
    in_file, in_model = state[key].shape[1], own[key].shape[1]
    if in_file == 2 * in_model:
        return " (the weights were trained with global context: set model.roi_head.global_context=true)"
    if in_model == 2 * in_file:
        return " (the weights were trained without global context: set model.roi_head.global_context=false)"
    return ""
