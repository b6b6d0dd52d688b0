"""Training the per-class RPN localizer, or the R-CNN stage on top of it (``task: rcnn``), from a config
(paper App. C).

Training crops come from the images of LOC_train_solution.csv (the ones with boxes); during and after
training the localizer is scored on the val set with the classes ranked by its own scores (the primary
metric for model_best.pth is the GT-known localization accuracy). tools/eval_loc.py's model mode
(evaluation/evaluator.py) adds a classifier and writes the submission.
"""

from __future__ import annotations

import logging

from backbones.speed import apply_speed_switches
from classification.data.ilsvrc import Synsets
from classification.data.imagenet import list_val_images
from classification.data.loaders import prepare_data, resolve_num_classes
from resnet_engine import distributed as dist_utils
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.loaders import build_train_loader
from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.setup import setup_run
from resnet_engine.trainer import Trainer

from .config import check_trunk_start
from .data.loc_dataset import LocalizationDataset, LocTrainTransform, list_boxed_train_images
from .data.rcnn_rois import RoITrainDataset
from .evaluation.rcnn_evaluation import score_rcnn
from .evaluation.rpn_evaluation import score_localizer
from .evaluation.submission import val_records_ground_truth
from .rcnn import RCNNLocalizer, build_rcnn
from .rcnn_proposals import cached_training_proposals
from .rpn_localizer import RPNLocalizer, build_localizer
from .weights import load_proposal_rpn

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "loc/gt_known_acc"  # higher is better, as the trainer's best-model selection needs


def build_loc_train_set(cfg, synsets: Synsets) -> LocalizationDataset:
    transform = LocTrainTransform(list(cfg.input.train_short_side), cfg.input.crop, cfg.input.random_flip,
                                  cfg.input.color_jitter, cfg.input.lighting_std, cfg.rpn.min_visible)
    records = list_boxed_train_images(cfg.data.root, synsets)
    return LocalizationDataset(records, transform, train=True, on_bad_image=cfg.data.on_bad_image)


def check_val_data(cfg, synsets: Synsets) -> None:
    """Read what the evaluation reads, now: a missing or malformed LOC_val_solution.csv or test.blacklist,
    images not where they are read or resized on disk (boxes of another frame) would otherwise end the run
    at its first evaluation, hours in."""
    val_records_ground_truth(cfg, synsets, list_val_images(cfg.data.root, synsets, cfg.test.max_images))


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
    check_trunk_start(cfg)
    if cfg.task == "rcnn":
        return train_rcnn(cfg, resume, overwrite)
    images_per_process = check_batch_divides(cfg.solver.ims_per_batch)
    device = setup_run(cfg, resume=resume, overwrite=overwrite)
    synsets = prepare_data(cfg)
    num_classes = resolve_num_classes(cfg, synsets)
    check_val_data(cfg, synsets)
    train_set = build_loc_train_set(cfg, synsets)
    logger.info("%d training images with boxes, %d classes", len(train_set), num_classes)

    model = apply_speed_switches(build_localizer(cfg, num_classes).to(device), cfg.solver)
    meta = {"task": "localization", "stage": "rpn", "num_classes": num_classes, "wnids": list(synsets.wnids),
            "class_names": list(synsets.names), "depth": cfg.model.backbone.depth}
    return run_trainer(model, train_set, cfg, device, images_per_process, meta, resume,
                       evaluate=lambda m: evaluate_during_training(m, cfg, synsets))


def run_trainer(model, train_set, cfg, device, images_per_process: int, meta: dict, resume: bool, evaluate) -> dict:
    """Train ``model`` on ``train_set`` with the config's solver (continuing the run in output_dir when
    ``resume``), scoring it with ``evaluate``; returns the final metrics."""
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    trainer = Trainer(
        model, optimizer, scheduler, cfg.solver, cfg.output_dir,
        make_loader=lambda start: build_train_loader(train_set, images_per_process, cfg.seed,
                                                     cfg.data.num_workers, start),
        device=device, evaluate=evaluate, eval_period=cfg.test.eval_period, primary_metric=PRIMARY_METRIC,
        meta=meta, config_text=config_to_text(cfg), logging_cfg=cfg.logging,
    )
    if resume:
        trainer.resume()
    return trainer.train()


# --------------------------------------------------------------------------------------------- the R-CNN stage


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
    check_val_data(cfg, synsets)
    rpn, rpn_cfg = load_proposal_rpn(cfg, synsets)
    rpn = rpn.to(device).eval()
    records = list_boxed_train_images(cfg.data.root, synsets)
    proposals = cached_training_proposals(cfg, rpn, rpn_cfg, records)
    section = cfg.rcnn
    model = apply_speed_switches(build_rcnn(cfg, num_classes).to(device), cfg.solver)
    train_set = RoITrainDataset(records, proposals, model.rules, model.coder, section.warp_size,
                                section.context_pad, cfg.input.random_flip, cfg.data.on_bad_image)
    del proposals, records  # the dataset holds both as flat arrays, which forked workers share
    logger.info("%d training images with proposals, %d RoIs per image, %d classes", train_set.images_with_proposals,
                section.rois_per_image, num_classes)
    meta = {"task": "localization", "stage": "rcnn", "num_classes": num_classes, "wnids": list(synsets.wnids),
            "class_names": list(synsets.names), "depth": cfg.model.backbone.depth, "rpn_weights": section.rpn_weights}
    return run_trainer(model, train_set, cfg, device, images_per_process, meta, resume,
                       evaluate=lambda m: evaluate_rcnn_during_training(m, rpn, rpn_cfg, cfg, synsets))
