"""Training and testing the per-class RPN localizer, or the R-CNN stage on top of it (``task: rcnn``), from a
config (paper App. C).

Training crops come from the images of LOC_train_solution.csv (the ones with boxes); during and after
training the localizer is scored on the val set with the classes ranked by its own scores (the primary
metric for model_best.pth is the GT-known localization accuracy). tools/eval_loc.py's model mode adds a
classifier and writes the submission.
"""

from __future__ import annotations

import logging
import os

from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import BEST_NAME, FINAL_NAME, Checkpointer, load_checkpoint
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.errors import UserError
from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.setup import setup_run
from resnet_engine.trainer import Trainer

from .data.classification import build_train_loader
from .data.ilsvrc import Synsets
from .data.localization import LocalizationDataset, LocTrainTransform, list_boxed_train_images
from .evaluate import write_json
from .localize import score_localizer
from .rcnn import (
    RCNNLocalizer,
    RoITrainDataset,
    build_rcnn,
    load_proposal_rpn,
    proposal_views,
    score_rcnn,
    training_proposals,
)
from .rpn_localizer import RPNLocalizer, build_localizer
from .train_cls import prepare_data, resolve_num_classes

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "loc/gt_known_acc"  # higher is better, as the trainer's best-model selection needs


def build_loc_train_set(cfg, synsets: Synsets) -> LocalizationDataset:
    transform = LocTrainTransform(list(cfg.input.train_short_side), cfg.input.crop, cfg.input.random_flip,
                                  cfg.input.color_jitter, cfg.input.lighting_std, cfg.rpn.min_visible)
    records = list_boxed_train_images(cfg.data.root, synsets)
    return LocalizationDataset(records, transform, train=True, on_bad_image=cfg.data.on_bad_image)


def evaluate_during_training(model: RPNLocalizer, cfg, synsets: Synsets) -> dict:
    metrics = score_localizer(model, cfg, synsets, classifier="")
    if dist_utils.is_main_process():
        logger.info("val (%s, %d images): LOC error on GT class %.2f%%, top-5 LOC error %.2f%% (classes ranked "
                    "by the RPN)", metrics["test_mode"], metrics["num_images"], metrics["gt_known_loc_err"],
                    metrics["top5_loc_err"])
    return {"loc": {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                    "gt_known_acc": round(100 - metrics["gt_known_loc_err"], 4)}}


def train_localizer(cfg, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg``'s localizer, scoring it on the val set; returns the final metrics."""
    if cfg.task == "rcnn":
        return train_rcnn(cfg, resume, overwrite)
    images_per_process = check_batch_divides(cfg.solver.ims_per_batch)
    device = setup_run(cfg, resume=resume, overwrite=overwrite)
    synsets = prepare_data(cfg)
    num_classes = resolve_num_classes(cfg, synsets)
    train_set = build_loc_train_set(cfg, synsets)
    logger.info("%d training images with boxes, %d classes", len(train_set), num_classes)

    model = build_localizer(cfg, num_classes).to(device)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    meta = {"task": "localization", "stage": "rpn", "num_classes": num_classes, "wnids": list(synsets.wnids),
            "class_names": list(synsets.names), "depth": cfg.model.backbone.depth}
    trainer = Trainer(
        model, optimizer, scheduler, cfg.solver, cfg.output_dir,
        make_loader=lambda start: build_train_loader(train_set, images_per_process, cfg.seed,
                                                     cfg.data.num_workers, start),
        device=device, evaluate=lambda m: evaluate_during_training(m, cfg, synsets),
        eval_period=cfg.test.eval_period, primary_metric=PRIMARY_METRIC, meta=meta,
        config_text=config_to_text(cfg),
    )
    if resume:
        trainer.resume()
    return trainer.train()


# --------------------------------------------------------------------------------------------- model mode


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


def evaluate_localizer_weights(cfg, weights: str | None, classifier: str | None, out_dir: str | None) -> dict:
    """Model mode: score ``weights`` (default: the run's latest checkpoint) on the val set; write
    out_dir/loc_<mode>_submission.csv (the scored Kaggle CSV), out_dir/loc_<mode>_gt_class.csv (the GT
    class's boxes) and out_dir/metrics.json (percent)."""
    device = setup_run(cfg, save=False)
    synsets = prepare_data(cfg)
    weights = weights or latest_weights(cfg.output_dir)
    classifier = cfg.classifier.weights if classifier is None else classifier
    if classifier and not os.path.isfile(classifier):
        raise UserError(f"classifier weights not found: {classifier} (train one with tools/train_cls.py, or "
                        f"leave classifier.weights empty to rank classes by the RPN's scores)")
    out_dir = out_dir or cfg.output_dir
    if cfg.task == "rcnn":
        rpn, rpn_cfg = load_proposal_rpn(cfg, synsets)
        model = load_rcnn(cfg, weights, synsets).to(device)
        metrics = score_rcnn(model, rpn.to(device), rpn_cfg, cfg, synsets, classifier or "", out_dir)
        metrics["rpn_weights"] = cfg.rcnn.rpn_weights
    else:
        model = load_localizer(cfg, weights, synsets).to(device)
        metrics = score_localizer(model, cfg, synsets, classifier or "", out_dir)
    metrics["weights"] = weights
    if dist_utils.is_main_process():
        write_json(metrics, os.path.join(out_dir, "metrics.json"))
    return metrics


# --------------------------------------------------------------------------------------------- the R-CNN stage


def load_rcnn(cfg, weights: str, synsets: Synsets) -> RCNNLocalizer:
    missing = (f"R-CNN weights not found: {weights} (give --weights output/<rcnn run>/model_final.pth, "
               f"or train one with python tools/train_loc.py --cfg configs/shapes_loc_rcnn.yaml)")
    return load_stage(weights, synsets, "rcnn", lambda: build_rcnn(cfg, len(synsets), False), missing)


def cached_training_proposals(cfg, rpn: RPNLocalizer, rpn_cfg, records) -> dict:
    """The GT class's proposals of every training image, kept in output_dir so that a resumed run (or a
    second one with the same RPN and proposal settings) does not run the RPN over the training set again."""
    import torch

    path = os.path.join(cfg.output_dir, "rcnn_train_proposals.pth")
    key = {"rpn_weights": os.path.abspath(cfg.rcnn.rpn_weights),
           "rpn_mtime": os.path.getmtime(cfg.rcnn.rpn_weights), "top_n": cfg.rcnn.proposals_per_class,
           "mode": cfg.test.mode, "resize": cfg.test.resize, "scales": list(cfg.test.dense_scales),
           "flip": bool(cfg.test.dense_flip), "images": len(records)}
    if os.path.isfile(path):
        cached = torch.load(path, map_location="cpu", weights_only=False)
        if cached.get("key") == key:
            logger.info("training proposals read from %s", path)
            return cached["proposals"]
    proposals = training_proposals(rpn, proposal_views(cfg, rpn_cfg), records, cfg)
    if dist_utils.is_main_process():
        os.makedirs(cfg.output_dir, exist_ok=True)
        torch.save({"key": key, "proposals": proposals}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return proposals


def evaluate_rcnn_during_training(model: RCNNLocalizer, rpn: RPNLocalizer, rpn_cfg, cfg, synsets: Synsets) -> dict:
    metrics = score_rcnn(model, rpn, rpn_cfg, cfg, synsets)
    if dist_utils.is_main_process():
        logger.info("val (%s, %d images): LOC error on GT class %.2f%% (RPN alone %.2f%%), top-5 LOC error "
                    "%.2f%% (RPN alone %.2f%%), classes ranked by the RPN", metrics["test_mode"],
                    metrics["num_images"], metrics["gt_known_loc_err"], metrics["rpn"]["gt_known_loc_err"],
                    metrics["top5_loc_err"], metrics["rpn"]["top5_loc_err"])
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    rpn_numbers = {f"rpn_{k}": v for k, v in metrics["rpn"].items() if isinstance(v, (int, float))}
    return {"loc": {**numbers, **rpn_numbers, "gt_known_acc": round(100 - metrics["gt_known_loc_err"], 4)}}


def train_rcnn(cfg, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the R-CNN stage on the proposals of ``rcnn.rpn_weights``, scoring RPN+RCNN on the val set."""
    images_per_process = check_batch_divides(cfg.solver.ims_per_batch)
    device = setup_run(cfg, resume=resume, overwrite=overwrite)
    synsets = prepare_data(cfg)
    num_classes = resolve_num_classes(cfg, synsets)
    rpn, rpn_cfg = load_proposal_rpn(cfg, synsets)
    rpn = rpn.to(device).eval()
    records = list_boxed_train_images(cfg.data.root, synsets)
    proposals = cached_training_proposals(cfg, rpn, rpn_cfg, records)
    section = cfg.rcnn
    model = build_rcnn(cfg, num_classes).to(device)
    train_set = RoITrainDataset(records, proposals, model.rules, model.coder, section.warp_size,
                                section.context_pad, cfg.input.random_flip, cfg.data.on_bad_image)
    logger.info("%d training images with proposals, %d RoIs per image, %d classes", len(proposals),
                section.rois_per_image, num_classes)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    meta = {"task": "localization", "stage": "rcnn", "num_classes": num_classes, "wnids": list(synsets.wnids),
            "class_names": list(synsets.names), "depth": cfg.model.backbone.depth, "rpn_weights": section.rpn_weights}
    trainer = Trainer(
        model, optimizer, scheduler, cfg.solver, cfg.output_dir,
        make_loader=lambda start: build_train_loader(train_set, images_per_process, cfg.seed,
                                                     cfg.data.num_workers, start),
        device=device, evaluate=lambda m: evaluate_rcnn_during_training(m, rpn, rpn_cfg, cfg, synsets),
        eval_period=cfg.test.eval_period, primary_metric=PRIMARY_METRIC, meta=meta,
        config_text=config_to_text(cfg),
    )
    if resume:
        trainer.resume()
    return trainer.train()
