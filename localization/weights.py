"""Loading trained localizers from their checkpoints: the per-class RPN, the R-CNN stage and the RPN its
proposals come from, and a classifier that ranks the classes; each checked to be the stage, and of the
classes, the config expects."""

from __future__ import annotations

import os

from classification.data.ilsvrc import Synsets
from classification.weights import load_trained_classifier as load_classifier_checkpoint
from resnet_engine.checkpoint import BEST_NAME, FINAL_NAME, Checkpointer, load_checkpoint
from resnet_engine.config import config_from_text, task_named
from resnet_engine.errors import UserError

from .config import LocalizationConfig
from .rcnn import RCNNLocalizer, build_rcnn
from .rpn_localizer import RPNLocalizer, build_localizer


def latest_weights(output_dir: str) -> str:
    """model_final.pth of a finished run, else the run's newest periodic checkpoint."""
    final = os.path.join(output_dir, FINAL_NAME)
    if os.path.isfile(final):
        return final
    found = [p for p in Checkpointer(output_dir).candidates() if os.path.basename(p) != BEST_NAME]
    if not found:
        raise UserError(f"no localizer checkpoint in {output_dir}: train one with python tools/train_loc.py "
                        f"(same --cfg), or give --weights")
    return found[0]


def load_localizer(cfg, weights: str, synsets: Synsets) -> RPNLocalizer:
    missing = (f"localizer weights not found: {weights} (give --weights output/<loc run>/model_final.pth, "
               f"or train one with python tools/train_loc.py)")
    return load_stage(weights, synsets, "rpn", lambda: build_localizer(cfg, len(synsets), False), missing)


def load_rcnn(cfg, weights: str, synsets: Synsets) -> RCNNLocalizer:
    missing = (f"R-CNN weights not found: {weights} (give --weights output/<rcnn run>/model_final.pth, "
               f"or train one with python tools/train_loc.py --cfg configs/shapes_loc_rcnn.yaml)")
    return load_stage(weights, synsets, "rcnn", lambda: build_rcnn(cfg, len(synsets), False), missing)


def load_stage(weights: str, synsets: Synsets, stage: str, build, missing_message: str):
    """A trained stage ("rpn" or "rcnn") from its checkpoint, after checking it is that stage's."""
    if not os.path.isfile(weights):
        raise UserError(missing_message)
    state = load_checkpoint(weights)
    check_localizer_meta(state, weights, synsets, stage=stage)
    model = build()
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
