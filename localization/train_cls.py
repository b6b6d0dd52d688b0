"""Training and testing an ImageNet classifier from a config: data, model, evaluation and the trainer wired up."""

from __future__ import annotations

import logging
import os
import time

import torch
from tqdm import tqdm

from backbones.weights import apply_state_dict, read_state_dict, resolve_weights
from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.errors import UserError
from resnet_engine.loaders import build_test_loader, build_train_loader
from resnet_engine.logger import write_json
from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.setup import setup_run
from resnet_engine.trainer import Trainer

from .classifier import Classifier, build_classifier, errors_from_ranks, true_label_ranks
from .data.classification import (
    ClassificationDataset,
    EvalTransform,
    TrainTransform,
    list_train_images,
    list_val_images,
)
from .data.ilsvrc import Synsets, read_synsets
from .data.synthetic import ensure_synthetic_loc

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "cls/top1_acc"  # higher is better, as the trainer's best-model selection needs


# --------------------------------------------------------------------------------------------- data


def prepare_data(cfg) -> Synsets:
    """Generate the synthetic set when asked (main process first), then read the class list."""
    if cfg.data.synthetic == "shapes_loc":
        if dist_utils.is_main_process():
            ensure_synthetic_loc(cfg.data.root)
        dist_utils.barrier()
    path = os.path.join(cfg.data.root, "LOC_synset_mapping.txt")
    if not os.path.isfile(path):
        raise UserError(f"class list not found: {path} (set data.root to the folder holding "
                        f"LOC_synset_mapping.txt, or data.synthetic=shapes_loc)")
    return read_synsets(path)


def resolve_num_classes(cfg, synsets: Synsets) -> int:
    wanted = cfg.model.num_classes
    if wanted and wanted != len(synsets):
        raise UserError(f"model.num_classes={wanted} but {synsets.source} lists {len(synsets)} classes: set "
                        f"model.num_classes=0 to take the list's count")
    return len(synsets)


def build_train_set(cfg, synsets: Synsets) -> ClassificationDataset:
    transform = TrainTransform(list(cfg.input.train_short_side), cfg.input.crop, cfg.input.random_flip,
                               cfg.input.color_jitter, cfg.input.lighting_std)
    records = list_train_images(cfg.data.root, synsets, cfg.data.train_list)
    return ClassificationDataset(records, transform, train=True, on_bad_image=cfg.data.on_bad_image)


def build_test_set(cfg, synsets: Synsets) -> ClassificationDataset:
    transform = EvalTransform(cfg.test.mode, cfg.test.resize, cfg.input.crop, list(cfg.test.dense_scales))
    records = list_val_images(cfg.data.root, synsets, cfg.test.max_images)
    return ClassificationDataset(records, transform, train=False, on_bad_image=cfg.data.on_bad_image)


# --------------------------------------------------------------------------------------------- evaluation


def batch_scores(model: Classifier, samples: list[dict], mode: str, dense_flip: bool) -> torch.Tensor:
    """The classifier's scores (B, K) of a batch of readable test samples, tested in ``mode``."""
    if mode == "dense":
        # Images differ in size: one image (all its scales) at a time.
        return torch.cat([model.predict_logits([v[None] for v in s["views"]], mode, dense_flip) for s in samples])
    return model.predict_logits(torch.stack([torch.stack(s["views"]) for s in samples]), mode)


@torch.inference_mode()
def classify_dataset(model: Classifier, loader, mode: str, dense_flip: bool = False,
                     progress: bool = True) -> tuple[list[int], int, float]:
    """(rank of the true label among the top 5 for each readable image, unreadable images, seconds/image)."""
    model.eval()
    ranks: list[int] = []
    unreadable, seconds = 0, 0.0
    bar = tqdm(loader, desc=f"test {mode}", disable=not (progress and dist_utils.is_main_process()), leave=False)
    for batch in bar:
        samples = [s for s in batch if s["views"] is not None]
        unreadable += len(batch) - len(samples)
        if not samples:
            continue
        start = time.perf_counter()
        scores = batch_scores(model, samples, mode, dense_flip)
        seconds += time.perf_counter() - start
        labels = torch.tensor([s["label"] for s in samples])
        ranks += true_label_ranks(scores.cpu(), labels, 5).tolist()
    return ranks, unreadable, seconds / max(len(ranks), 1)


def evaluate_classifier(model: Classifier, dataset: ClassificationDataset, cfg, progress: bool = True) -> dict:
    """{"cls": {"top1_err", "top5_err", "top1_acc", ...}} on ``dataset``, sharded, identical on every process."""
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    ranks, unreadable, seconds = classify_dataset(model, loader, cfg.test.mode, cfg.test.dense_flip, progress)
    gathered = dist_utils.all_gather_objects((ranks, unreadable))
    metrics = None
    if dist_utils.is_main_process():
        all_ranks = [r for part, _ in gathered for r in part]
        skipped = sum(count for _, count in gathered)
        errors = errors_from_ranks(all_ranks, (1, 5))
        metrics = {"cls": {**{k: round(v, 4) for k, v in errors.items()},
                           "top1_acc": round(100 - errors["top1_err"], 4), "num_images": len(all_ranks),
                           "seconds_per_image": round(seconds, 5)}}
        if skipped:
            logger.warning("%d val images could not be read and are not counted", skipped)
        logger.info("%s", format_metrics(metrics, cfg.test.mode))
    return dist_utils.broadcast_object(metrics)


def format_metrics(metrics: dict, mode: str) -> str:
    cls = metrics["cls"]
    return (f"top-1 error {cls['top1_err']:.2f}%, top-5 error {cls['top5_err']:.2f}% ({mode}, "
            f"{cls['num_images']} images, {cls['seconds_per_image']:.4f} s/image)")


# --------------------------------------------------------------------------------------------- entry points


def train_classifier(cfg, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg``'s classifier, testing it on the val set; returns the final metrics."""
    images_per_process = check_batch_divides(cfg.solver.ims_per_batch)
    device = setup_run(cfg, resume=resume, overwrite=overwrite)
    synsets = prepare_data(cfg)
    num_classes = resolve_num_classes(cfg, synsets)
    train_set = build_train_set(cfg, synsets)
    test_set = build_test_set(cfg, synsets)
    logger.info("%d training images, %d val images, %d classes", len(train_set), len(test_set), num_classes)

    model = build_classifier(cfg, num_classes).to(device)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    meta = {"task": "classification", "num_classes": num_classes, "wnids": list(synsets.wnids),
            "class_names": list(synsets.names), "depth": cfg.model.backbone.depth}
    trainer = Trainer(
        model, optimizer, scheduler, cfg.solver, cfg.output_dir,
        make_loader=lambda start: build_train_loader(train_set, images_per_process, cfg.seed,
                                                     cfg.data.num_workers, start),
        device=device, evaluate=lambda m: evaluate_classifier(m, test_set, cfg), eval_period=cfg.test.eval_period,
        primary_metric=PRIMARY_METRIC, meta=meta, config_text=config_to_text(cfg),
    )
    if resume:
        trainer.resume()
    return trainer.train()


def read_classifier_state(spec: str, depth: int) -> dict[str, torch.Tensor]:
    """The tensors of a training checkpoint, a state dict file, or a torchvision:/timm: weights name."""
    if os.path.isfile(spec) and spec.lower().endswith((".pth", ".pt")):
        try:
            return load_checkpoint(spec)["model"]
        except UserError as error:
            if "no 'model' entry" not in str(error):
                raise
    return read_state_dict(resolve_weights(spec, depth))


def load_classifier_weights(model: Classifier, spec: str) -> None:
    """Load a whole classifier (ResNet and fc); an fc for another number of classes is an error."""
    state = read_classifier_state(spec, model.backbone.depth)
    head = next((v for k, v in state.items() if k.endswith("fc.weight")), None)
    if head is None or head.shape[0] != model.num_classes:
        found = "no fc" if head is None else f"an fc for {head.shape[0]} classes"
        raise UserError(f"{spec} holds {found}, the val set has {model.num_classes} classes: give the weights "
                        f"of a classifier trained on these classes")
    apply_state_dict(model.backbone, state, source=spec)


def evaluate_weights(cfg, weights: str) -> dict:
    """Test ``weights`` on the config's val set in ``test.mode``; writes output_dir/eval_<mode>.json."""
    device = setup_run(cfg, save=False)
    synsets = prepare_data(cfg)
    model = build_classifier(cfg, resolve_num_classes(cfg, synsets), load_backbone_weights=False)
    load_classifier_weights(model, weights)
    metrics = evaluate_classifier(model.to(device), build_test_set(cfg, synsets), cfg)
    if dist_utils.is_main_process():
        write_json({**metrics, "mode": cfg.test.mode, "weights": weights},
                   os.path.join(cfg.output_dir, f"eval_{cfg.test.mode}.json"))
    return metrics
