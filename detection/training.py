"""Training a detector from a config: the wiring between data, model, evaluation and the trainer."""

from __future__ import annotations

import logging

from backbones.speed import apply_speed_switches
from resnet_engine import distributed as dist_utils
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.setup import setup_run
from resnet_engine.trainer import Trainer

from .data.loader import build_test_dataset, build_train_dataset, build_train_loader
from .evaluation.evaluator import evaluate_model, primary_metric
from .modeling.build import build_model, test_needs_original_images
from .weights import load_weights_to_fine_tune

logger = logging.getLogger(__name__)


def train_detector(cfg, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg``'s detector, evaluating on its test set; returns the final metrics."""
    images_per_process = check_batch_divides(cfg.solver.ims_per_batch)
    device = setup_run(cfg, resume=resume, overwrite=overwrite)
    train_set = build_train_dataset(cfg)
    category_map = train_set.category_map
    num_classes = cfg.model.num_classes or category_map.num_classes
    test_set = build_test_dataset(cfg, category_map, resize=not test_needs_original_images(cfg))

    model = build_model(cfg, num_classes, backbone_weights=not cfg.model.weights)
    if cfg.model.weights:
        load_weights_to_fine_tune(model, cfg.model.weights, category_map, cfg.model.weights_keep_classes_by_name)
    model.to(device)
    apply_speed_switches(model, cfg.solver)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)

    def evaluate(model_to_test):
        metrics = evaluate_model(model_to_test, test_set, cfg)
        summary = metrics.pop("_summary", "")
        if dist_utils.is_main_process() and summary:
            logger.info("evaluation on %d images of %s:\n%s", metrics["num_images"], test_set.ann_file, summary)
        return metrics

    meta = {"num_classes": num_classes, "category_ids": category_map.category_ids,
            "class_names": category_map.names, "arch": cfg.model.arch, "task": "detection"}
    trainer = Trainer(model, optimizer, scheduler, cfg.solver, cfg.output_dir,
                      make_loader=lambda start: build_train_loader(train_set, cfg, images_per_process, start),
                      device=device, evaluate=evaluate, eval_period=cfg.test.eval_period,
                      primary_metric=primary_metric(cfg), meta=meta, config_text=config_to_text(cfg),
                      logging_cfg=cfg.logging)
    if resume:
        trainer.resume()
    return trainer.train()
