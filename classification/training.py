"""Training a classifier from a config, on ImageNet (the ILSVRC layout) or CIFAR, with the engine's trainer
(resume, torchrun, AMP, logs, checkpoints, progress): the datasets differ only in their data and test
views (classification/data/loaders.py); the network, optimizer, schedule and loop are one code path.

    from classification.config import load_classification_config
    from classification.training import train_classifier

    cfg = load_classification_config("configs/cifar10_resnet56.yaml", ["data.root=/data/cifar"])
    run = train_classifier(cfg)
    run.metrics["test"]["top1_err"], run.output_dir, run.weights

During training, metrics.jsonl logs the loss and ``train_error`` (the top-1 error of the training
batches, in percent) every solver.log_period iterations, and the errors of each test set every
test.eval_period iterations.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from backbones.speed import apply_speed_switches
from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import FINAL_NAME
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.setup import setup_run
from resnet_engine.trainer import Trainer

from .classifier import build_classifier, network_name
from .data.loaders import build_classification_data
from .evaluation import evaluate_classifier

logger = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """A finished training run: its folder, its final metrics ({section: {"top1_err", ...}}, as in
    output_dir/metrics.json) and its final weights (output_dir/model_final.pth)."""

    output_dir: str
    metrics: dict
    weights: str


# What a resumed run may not change: the images it trains on, and those held out from them.
SPLIT_CHANGE = ("the training and held-out images would change mid-run: images already trained on would be "
                "scored as held out (and CIFAR's per-pixel mean would change)")
FIXED_ON_RESUME = {"data.dataset": "the run would continue on another dataset", "data.train_split": SPLIT_CHANGE,
                   "data.val_images": SPLIT_CHANGE}


def train_classifier(cfg, resume: bool = False, overwrite: bool = False) -> TrainedRun:
    """Train ``cfg``'s classifier, testing it on the config's test sets; ``resume`` continues the run in
    output_dir, ``overwrite`` replaces an earlier run there."""
    images_per_process = check_batch_divides(cfg.solver.ims_per_batch)
    device = setup_run(cfg, resume=resume, overwrite=overwrite)
    data = build_classification_data(cfg, images_per_process)
    model = apply_speed_switches(build_classifier(cfg, data.num_classes).to(device), cfg.solver)
    if dist_utils.is_main_process():
        parameters = sum(p.numel() for p in model.parameters())
        logger.info("%s, %d parameters (%.2fM); %s", network_name(cfg), parameters, parameters / 1e6,
                    data.describe())
    if dist_utils.is_main_process() and data.primary_metric.startswith("test/") and cfg.test.eval_period:
        logger.info("model_best.pth is chosen on the test set (data.train_split=%s holds no images out): its error "
                    "is not a test error; report model_final.pth's (metrics.json)", cfg.data.train_split)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    trainer = Trainer(
        model, optimizer, scheduler, cfg.solver, cfg.output_dir, make_loader=data.train_loader, device=device,
        evaluate=lambda m: evaluate_classifier(m, data.test_loaders, cfg), eval_period=cfg.test.eval_period,
        primary_metric=data.primary_metric, meta=data.meta, config_text=config_to_text(cfg),
        logging_cfg=cfg.logging, fixed_on_resume=FIXED_ON_RESUME,
    )
    if resume:
        trainer.resume()
    metrics = trainer.train()
    return TrainedRun(cfg.output_dir, metrics, os.path.join(cfg.output_dir, FINAL_NAME))
