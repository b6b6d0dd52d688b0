"""Loading trained or converted detectors, and one readable message when weights do not fit the config's model."""

from __future__ import annotations

import torch

from backbones.weights import read_state_dict
from resnet_engine.checkpoint import CheckpointError, load_checkpoint
from resnet_engine.errors import UserError

from .data.coco import CategoryMap
from .modeling.build import build_model
from .modeling.speed import optimize_for_inference


def read_detector_weights(path: str) -> tuple[dict, dict]:
    """(state dict, metadata) from a training checkpoint, model_final.pth or a converted file."""
    try:
        state = load_checkpoint(path)
        return state["model"], state.get("meta", {}) or {}
    except CheckpointError as error:
        if "no 'model' entry" not in str(error):
            raise
    return read_state_dict(path), {}


def load_detector(cfg, weights: str, device: torch.device):
    """Build the detector of ``cfg`` and load ``weights``; returns (model, category map)."""
    state, meta = read_detector_weights(weights)
    num_classes = meta.get("num_classes") or cfg.model.num_classes
    if not num_classes:
        raise UserError(f"{weights} does not record its number of classes: set model.num_classes")
    model = build_model(cfg, num_classes, backbone_weights=False)
    check_weights_fit(model, state, weights)
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


def check_weights_fit(model, state: dict, source: str) -> None:
    """One readable message when a weights file does not match the config's model."""
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
    raise UserError(f"{source} does not fit the model of this config{hint}: " + "; ".join(details))


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
