"""Testing a classifier: the top-1 and top-5 error of each test set of a config, sharded over the processes
and gathered, during training (the trainer's ``evaluate``) and for given weights (``--eval-only``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from resnet_engine import distributed as dist_utils
from resnet_engine.errors import UserError
from resnet_engine.files import write_json
from resnet_engine.setup import setup_run

from .classifier import CifarClassifier, Classifier, build_classifier, errors_from_ranks, true_label_ranks
from .config import is_cifar
from .data.loaders import build_classification_data
from .weights import check_checkpoint_fits, load_classifier_weights, read_checkpoint_meta

logger = logging.getLogger(__name__)


def batch_scores(model: Classifier, samples: list[dict], mode: str, dense_flip: bool) -> torch.Tensor:
    """The ImageNet classifier's scores (B, K) of a batch of readable test samples, tested in ``mode``."""
    if mode == "dense":
        # Images differ in size: one image (all its scales) at a time.
        return torch.cat([model.predict_logits([v[None] for v in s["views"]], mode, dense_flip) for s in samples])
    return model.predict_logits(torch.stack([torch.stack(s["views"]) for s in samples]), mode)


def score_batch(model: Classifier | CifarClassifier, batch, cfg) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """(scores (B, K) or None when no image could be read, labels (B,), unreadable images) of a test batch:
    CIFAR's {"images", "labels"}, or a list of ImageNet samples with their test views."""
    if isinstance(batch, dict):
        return model.logits(batch["images"]), batch["labels"], 0
    samples = [s for s in batch if s["views"] is not None]
    labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    scores = batch_scores(model, samples, cfg.test.mode, cfg.test.dense_flip) if samples else None
    return scores, labels, len(batch) - len(samples)


@dataclass
class Ranks:
    """One process's share of a test set: the rank of the true label among the top 5 of each readable
    image (5: not among them), the images that could not be read, those whose scores were not all
    finite (counted wrong), and the seconds per image."""

    ranks: list[int] = field(default_factory=list)
    unreadable: int = 0
    not_finite: int = 0
    seconds_per_image: float = 0.0


@torch.inference_mode()
def classify_dataset(model, loader: Iterable, score: Callable, description: str, progress: bool = True) -> Ranks:
    model.eval()
    result, seconds = Ranks(), 0.0
    bar = tqdm(loader, desc=description, disable=not (progress and dist_utils.is_main_process()), leave=False)
    for batch in bar:
        start = time.perf_counter()
        scores, labels, skipped = score(batch)
        seconds += time.perf_counter() - start
        result.unreadable += skipped
        if scores is not None:
            scores = scores.cpu()
            result.ranks += true_label_ranks(scores, labels, 5).tolist()
            result.not_finite += int((~torch.isfinite(scores).all(dim=1)).sum())
    result.seconds_per_image = seconds / max(len(result.ranks), 1)
    return result


def evaluate_classifier(model, test_loaders: dict[str, Callable[[], Iterable]], cfg, progress: bool = True) -> dict:
    """{section: {"top1_err", "top5_err", "top1_acc", "num_images", "seconds_per_image"}} for each test set
    ("cls" for ImageNet's val images, with its :func:`val_views`; "val", "test" for CIFAR), identical on
    every process."""
    metrics = {}
    for section, make_loader in test_loaders.items():
        description = f"test {section} ({'32x32' if is_cifar(cfg) else cfg.test.mode})"
        ranks = classify_dataset(model, make_loader(), lambda b: score_batch(model, b, cfg), description, progress)
        errors = gather_errors(ranks, section)
        metrics[section] = errors if errors is None or section != "cls" else {**errors, **val_views(cfg)}
    if dist_utils.is_main_process():
        logger.info("%s", format_metrics(metrics))
    return dist_utils.broadcast_object(metrics)


def val_views(cfg) -> dict:
    """How ImageNet's val images were viewed, saved beside their errors: 10-crop and dense testing differ by
    about 2 points in the paper, and the numbers alone do not say which they are."""
    if cfg.test.mode == "dense":
        return {"mode": "dense", "dense_scales": [int(s) for s in cfg.test.dense_scales],
                "dense_flip": bool(cfg.test.dense_flip)}
    return {"mode": cfg.test.mode}


def gather_errors(ranks: Ranks, section: str) -> dict | None:
    """The errors of every process's ranks together (a collective call; None on the other processes)."""
    gathered = dist_utils.all_gather_objects(ranks)
    if not dist_utils.is_main_process():
        return None
    all_ranks = [r for part in gathered for r in part.ranks]
    name = "val" if section == "cls" else section
    skipped = sum(part.unreadable for part in gathered)
    if skipped:
        logger.warning("%d %s images could not be read and are not counted", skipped, name)
    not_finite = sum(part.not_finite for part in gathered)
    if not_finite:
        logger.warning("%d of the %d %s images got NaN or infinite scores and are counted as errors: the weights "
                       "have diverged or are damaged (a NaN training loss?)", not_finite, len(all_ranks), name)
    errors = errors_from_ranks(all_ranks, (1, 5))
    return {**{k: round(v, 4) for k, v in errors.items()}, "top1_acc": round(100 - errors["top1_err"], 4),
            "num_images": len(all_ranks), "seconds_per_image": round(ranks.seconds_per_image, 5)}


def format_metrics(metrics: dict) -> str:
    """One line per test set, named by its split: "test: top-1 error 7.51%, top-5 error ..."; ImageNet's val
    images with their test views, "val (10crop): ..."."""
    lines = []
    for section, values in metrics.items():
        if not isinstance(values, dict) or "top1_err" not in values:
            continue
        lines.append(f"{split_name(section, values)}: top-1 error {values['top1_err']:.2f}%, top-5 error "
                     f"{values['top5_err']:.2f}% ({values['num_images']} images, "
                     f"{values['seconds_per_image']:.4f} s/image)")
    return "\n".join(lines)


def split_name(section: str, values: dict) -> str:
    """The split a metrics section holds: CIFAR's "val" and "test" as named; ImageNet's "cls" is its val
    images, with the test views ("val (10crop)", "val (dense at 224/256/384/480/640 with flips)")."""
    if section != "cls":
        return section
    mode = values.get("mode")
    if mode == "dense":
        scales = "/".join(map(str, values["dense_scales"]))
        mode = f"dense at {scales} {'with' if values['dense_flip'] else 'without'} flips"
    return f"val ({mode})" if mode else "val"


def evaluate_weights(cfg, weights: str, split: str | None = None) -> dict:
    """Test ``weights`` on the config's test sets (ImageNet: the val images in ``test.mode``; CIFAR: the
    test images, and the held-out val images of data.train_split=train), or on CIFAR's ``split`` alone;
    writes output_dir/eval_<mode or split>.json. A CIFAR checkpoint's own pixel mean is subtracted."""
    device = setup_run(cfg, save=False)
    mean = None
    if is_cifar(cfg):
        if not os.path.isfile(weights):
            raise UserError(f"weights not found: {weights} (give the model_final.pth of a CIFAR run of "
                            f"tools/train_cls.py)")
        mean = read_checkpoint_meta(weights).get("pixel_mean")
        if mean is None:
            raise UserError(f"{weights} holds no pixel mean: give a checkpoint of a CIFAR run of "
                            f"tools/train_cls.py (its model_final.pth), which keeps the mean its images were "
                            f"trained with")
        mean = mean.numpy()
    data = build_classification_data(cfg, None, mean=mean, split=split)
    check_checkpoint_fits(weights, cfg, data.meta)
    model = build_classifier(cfg, data.num_classes, load_backbone_weights=False)
    load_classifier_weights(model, weights)
    metrics = evaluate_classifier(model.to(device), data.test_loaders, cfg)
    if dist_utils.is_main_process():
        name = cfg.test.mode if not is_cifar(cfg) else (split or "_".join(data.test_loaders))
        described = {"mode": cfg.test.mode} if not is_cifar(cfg) else {"dataset": cfg.data.dataset}
        write_json({**metrics, **described, "weights": weights}, os.path.join(cfg.output_dir, f"eval_{name}.json"))
    return metrics
