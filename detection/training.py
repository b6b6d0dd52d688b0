"""Training a detector from a config: the wiring between data, model, evaluation and the trainer.

``solver.scheme`` picks how: ``joint`` trains one model on the sum of the RPN and Fast R-CNN losses
(here); ``alternating`` runs Faster R-CNN's four steps (detection/alternating.py), each with a
:class:`TrainingRun`'s trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from backbones.speed import apply_speed_switches
from resnet_engine import distributed as dist_utils
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.setup import setup_run
from resnet_engine.trainer import Trainer

from .alternating import check_step_batches, train_alternating
from .data.coco import CategoryMap
from .data.loader import build_test_dataset, build_train_dataset, build_train_loader
from .evaluation.evaluator import evaluate_model, primary_metric
from .modeling.build import build_model, test_needs_original_images
from .modeling.faster_rcnn import FasterRCNN
from .weights import load_weights_to_fine_tune

logger = logging.getLogger(__name__)


def train_detector(cfg, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg``'s detector by its solver.scheme, evaluating on its test set; returns the final metrics."""
    if cfg.solver.scheme == "alternating":
        check_step_batches(cfg.solver)
        return train_alternating(TrainingRun.start(cfg, resume, overwrite), resume, overwrite)
    check_batch_divides(cfg.solver.ims_per_batch)
    return train_jointly(TrainingRun.start(cfg, resume, overwrite), resume)


def train_jointly(run: TrainingRun, resume: bool) -> dict:
    """One model, the RPN and Fast R-CNN losses summed on each mini-batch, in output_dir."""
    model = run.new_detector()
    trainer = run.trainer(model, run.cfg.solver, run.cfg.output_dir, evaluate=run.evaluate)
    if resume:
        trainer.resume()
    return trainer.train()


@dataclass
class TrainingRun:
    """What every trainer of one run shares: the config, device, datasets and class list."""

    cfg: object
    device: torch.device
    train_set: object
    test_set: object
    category_map: CategoryMap
    num_classes: int

    @classmethod
    def start(cls, cfg, resume: bool, overwrite: bool) -> TrainingRun:
        """Claim output_dir (setup_run), then read the training and test sets."""
        device = setup_run(cfg, resume=resume, overwrite=overwrite)
        train_set = build_train_dataset(cfg)
        category_map = train_set.category_map
        num_classes = cfg.model.num_classes or category_map.num_classes
        test_set = build_test_dataset(cfg, category_map, resize=not test_needs_original_images(cfg))
        return cls(cfg, device, train_set, test_set, category_map, num_classes)

    def new_detector(self) -> FasterRCNN:
        """A detector from the config's starting weights (ImageNet, or model.weights), on the device."""
        cfg = self.cfg
        model = build_model(cfg, self.num_classes, backbone_weights=not cfg.model.weights)
        if cfg.model.weights:
            load_weights_to_fine_tune(model, cfg.model.weights, self.category_map,
                                      cfg.model.weights_keep_classes_by_name, cfg=cfg)
        model.to(self.device)
        apply_speed_switches(model, cfg.solver)
        return model

    def evaluate(self, detector: nn.Module) -> dict:
        metrics = evaluate_model(detector, self.test_set, self.cfg)
        summary = metrics.pop("_summary", "")
        if dist_utils.is_main_process() and summary:
            logger.info("evaluation on %d images of %s:\n%s", metrics["num_images"], self.test_set.ann_file, summary)
        return metrics

    @property
    def meta(self) -> dict:
        """Saved in every checkpoint, for inference."""
        return {"num_classes": self.num_classes, "category_ids": self.category_map.category_ids,
                "class_names": self.category_map.names, "arch": self.cfg.model.arch, "task": "detection"}

    def trainer(self, model: nn.Module, solver, output_dir: str, evaluate=None) -> Trainer:
        """A Trainer of ``model``'s trainable parameters with ``solver``'s settings in ``output_dir``;
        ``evaluate`` (model -> metrics) runs on test.eval_period and at the end."""
        cfg = self.cfg
        images_per_process = check_batch_divides(solver.ims_per_batch)
        optimizer = build_optimizer(model, solver)
        return Trainer(model, optimizer, build_scheduler(optimizer, solver), solver, output_dir,
                       make_loader=lambda start: build_train_loader(self.train_set, cfg, images_per_process, start),
                       device=self.device, evaluate=evaluate, eval_period=cfg.test.eval_period,
                       primary_metric=primary_metric(cfg), meta=self.meta, config_text=config_to_text(cfg),
                       logging_cfg=cfg.logging)
