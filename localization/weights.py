"""Loading trained localizers from their checkpoints: the per-class RPN, the R-CNN stage and the RPN its
proposals come from, and a classifier that ranks the classes; each checked to be the stage, and of the
classes, the config expects."""

from __future__ import annotations

import copy
import os
import warnings

from omegaconf import OmegaConf

from classification.data.ilsvrc import Synsets
from classification.weights import load_trained_classifier as load_classifier_checkpoint
from resnet_engine.checkpoint import BEST_NAME, FINAL_NAME, Checkpointer, load_checkpoint, periodic_iteration
from resnet_engine.config import config_from_text, flatten_tree, task_named
from resnet_engine.errors import UserError

from .config import LocalizationConfig
from .rcnn import RCNNLocalizer, build_rcnn
from .rpn_localizer import RPNLocalizer, build_localizer


def latest_weights(output_dir: str) -> str:
    """model_final.pth of a finished run, else the run's newest periodic checkpoint, with a warning: the
    errors printed are then those of a network still in training."""
    final = os.path.join(output_dir, FINAL_NAME)
    if os.path.isfile(final):
        return final
    found = [p for p in Checkpointer(output_dir).candidates() if os.path.basename(p) != BEST_NAME]
    if not found:
        raise UserError(f"no localizer checkpoint in {output_dir}: train one with python tools/train_loc.py "
                        f"(same --cfg), or give --weights")
    iteration = periodic_iteration(found[0])
    warnings.warn(f"no {FINAL_NAME} in {output_dir}: scoring {os.path.basename(found[0])}, the newest checkpoint "
                  f"(iteration {iteration}), whose errors are not the finished run's; give --weights to "
                  f"score another", stacklevel=2)
    return found[0]


# Besides its tensors, what makes a trained network give its boxes: the anchors (other sizes of the same
# count fit the same tensors), the pixel normalization, the 1-crop view it was trained on, the R-CNN's box
# coder and warp. A checkpoint is always built with the values of the config it keeps, alone or in an
# ensemble (whose networks may differ from one another): one path, and right numbers whatever config scores it.
TRAINED_KEYS = ("model", "input.pixel_mean", "input.pixel_std", "input.format", "input.crop",
                "rcnn.bbox_reg_weights", "rcnn.warp_size", "rcnn.context_pad")
# Keys under model that only say how the training began: another value when scoring changes nothing.
START_KEYS = ("model.backbone.weights", "model.backbone.trust_pickle", "model.backbone.freeze_at",
              "model.backbone.zero_init_residual", "model.num_classes")


def saved_config(weights: str):
    """The training config a localizer checkpoint keeps; None for another file (its loader says what it is)."""
    if not os.path.isfile(weights):
        return None
    state = load_checkpoint(weights, mmap=True)
    if (state.get("meta") or {}).get("task") != "localization" or not state.get("config"):
        return None
    return config_from_text(LocalizationConfig, state["config"])


def trained_config(cfg, weights: str):
    """``cfg`` with the TRAINED_KEYS of the config ``weights`` was trained with."""
    saved = saved_config(weights)
    if saved is None:
        return cfg
    merged = copy.deepcopy(cfg)
    for key in TRAINED_KEYS:
        OmegaConf.update(merged, key, OmegaConf.select(saved, key), merge=False)
    return merged


def warn_untrained_values(cfg, trained, weights: str) -> None:
    """One line naming each key whose value in ``cfg`` the checkpoint ``weights`` replaces with its own
    (``trained``: trained_config's)."""
    given, own = flat_keys(cfg, TRAINED_KEYS), flat_keys(trained, TRAINED_KEYS)
    changed = [f"{key}={own[key]} (the config: {given[key]})" for key in own
               if own[key] != given.get(key) and key not in START_KEYS]
    if changed:
        warnings.warn(f"{weights} is scored as it was trained, not as the config says: {'; '.join(changed)}",
                      stacklevel=3)


def flat_keys(cfg, keys) -> dict:
    """{dotted key: value} of every leaf under ``keys`` (resnet_engine's flatten_tree of each)."""
    flat = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        flat.update(flatten_tree(value, prefix=f"{key}."))
    return flat


def load_localizer(cfg, weights: str, synsets: Synsets) -> RPNLocalizer:
    missing = (f"localizer weights not found: {weights} (give --weights output/<loc run>/model_final.pth, "
               f"or train one with python tools/train_loc.py)")
    return load_stage(cfg, weights, synsets, "rpn", build_localizer, missing)


def load_rcnn(cfg, weights: str, synsets: Synsets) -> RCNNLocalizer:
    missing = (f"R-CNN weights not found: {weights} (give --weights output/<rcnn run>/model_final.pth, "
               f"or train one with python tools/train_loc.py --cfg configs/shapes_loc_rcnn.yaml)")
    return load_stage(cfg, weights, synsets, "rcnn", build_rcnn, missing)


def load_stage(cfg, weights: str, synsets: Synsets, stage: str, build, missing_message: str):
    """A trained stage ("rpn" or "rcnn") from its checkpoint, after checking it is that stage's, built with
    the TRAINED_KEYS it was trained with."""
    if not os.path.isfile(weights):
        raise UserError(missing_message)
    state = load_checkpoint(weights)
    check_localizer_meta(state, weights, synsets, stage=stage)
    model = build(trained_config(cfg, weights), len(synsets), False)
    load_fitting_state(model, state, weights)
    return model


def check_localizer_meta(state: dict, weights: str, synsets: Synsets, stage: str) -> None:
    """A checkpoint of tools/train_loc.py, of the ``stage`` ("rpn" or "rcnn"; older RPN runs name none), on
    the classes of this data.root."""
    meta = state.get("meta") or {}
    if meta.get("task") != "localization":
        raise UserError(f"{weights} is not a localizer checkpoint of tools/train_loc.py: give --weights "
                        f"output/<loc run>/model_final.pth")
    found = meta.get("stage", "rpn")
    if found != stage:
        raise UserError(f"{weights} is a {found.upper()} checkpoint, but the config has task={stage}: evaluate it "
                        f"with the config it was trained with (task={found})")
    if list(meta.get("wnids", [])) != list(synsets.wnids):
        raise UserError(f"{weights} was trained on other classes than {synsets.source} lists: evaluate it "
                        f"with the config (data.root) it was trained with")


def load_fitting_state(model, state: dict, weights: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        problem = f"'{(missing or unexpected)[0]}' {'missing' if missing else 'unexpected'}" if (
            missing or unexpected) else ""
    except RuntimeError as error:  # a tensor of another shape
        problem = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), "shapes differ")
    if problem:
        raise UserError(f"{weights} does not fit the model of this config ({problem}): evaluate it with the "
                        f"config it was trained with (model.backbone.*, model.feature, model.head_channels, anchors)")


def load_proposal_rpn(cfg, synsets: Synsets, path: str | None = None) -> tuple[RPNLocalizer, object]:
    """The per-class RPN of ``path`` (default: ``rcnn.rpn_weights``), rebuilt from the config saved in its
    checkpoint."""
    path = path or cfg.rcnn.rpn_weights
    if not os.path.isfile(path):
        raise UserError(f"RPN weights not found: {path} (set rcnn.rpn_weights to a per-class RPN checkpoint; "
                        f"train one with python tools/train_loc.py --cfg configs/shapes_loc.yaml)")
    state = load_checkpoint(path)
    check_proposal_rpn_checkpoint(state, path)
    rpn_cfg = config_from_text(LocalizationConfig, state["config"])
    return load_localizer(rpn_cfg, path, synsets), rpn_cfg


def check_proposal_rpn_checkpoint(state: dict, path: str) -> None:
    """A checkpoint of a per-class RPN run, with its config: checked before that config is read with the
    localization schema, in which a classifier's or detector's keys are unknown."""
    meta = state.get("meta") or {}
    fix = "set rcnn.rpn_weights to output/<rpn run>/model_final.pth"
    other = task_named(meta["task"]) if meta.get("task") not in (None, "localization") else None
    if other is not None:
        raise UserError(f"{path} is a {other.model} checkpoint of {other.tool}, not a per-class RPN: {fix}")
    if meta.get("stage") == "rcnn":
        raise UserError(f"{path} is an R-CNN checkpoint of tools/train_loc.py (task: rcnn), not the per-class RPN "
                        f"that makes its proposals: {fix}")
    if meta.get("task") != "localization" or not state.get("config"):
        raise UserError(f"{path} is not a per-class RPN checkpoint of tools/train_loc.py: {fix}")


def load_trained_classifier(spec: str, synsets: Synsets):
    """A classifier checkpoint of tools/train_cls.py and its own config (input size, normalization, views),
    trained on the classes of ``synsets``."""
    trained = load_classifier_checkpoint(spec, option="classifier.weights (--classifier-weights)")
    if list(trained.meta.get("wnids", [])) != list(synsets.wnids):
        raise UserError(f"{spec} was trained on other classes than {synsets.source} lists: give a classifier "
                        f"trained on this data.root")
    return trained.model, trained.cfg
