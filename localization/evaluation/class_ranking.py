"""The classes a localizer's guesses are made for: a classifier's top-5 (``classifier.weights``, a checkpoint of
tools/train_cls.py, tested on the same val images with its own input settings as ``classifier.mode`` says) or,
without one, the localizer's own per-class scores, and the output says so."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from classification.data.ilsvrc import Synsets
from classification.data.loaders import build_test_set
from classification.evaluation import batch_scores
from resnet_engine import distributed as dist_utils
from resnet_engine.loaders import build_test_loader

from ..weights import load_trained_classifier
from .submission import network_name, top_classes


def class_ranking(classifiers: str | Sequence[str], cfg, synsets: Synsets, device: torch.device,
                  progress: bool = True) -> tuple[dict[str, list[int]] | None, str, str]:
    """(the classifiers' {image id: top-5 class indices}, or None to rank by the localizer's own scores;
    the name of what ranked the classes in the paper's table; a sentence saying the same). Several
    classifiers rank by their averaged probabilities (an ensemble)."""
    files = [classifiers] if isinstance(classifiers, str) else list(classifiers)
    files = [f for f in files if f]
    if not files:
        return None, "RPN scores", "the RPN's own per-class max scores (no classifier given)"
    if len(files) == 1:
        rankings, name = classifier_rankings(files[0], cfg, synsets, device, progress)
        return rankings, name, f"classifier {files[0]}"
    log_probabilities, names = {}, []
    for spec in files:
        scores, name = classifier_scores(spec, cfg, synsets, device, progress)
        names.append(name)
        for image_id, values in scores.items():
            log_probabilities.setdefault(image_id, []).append(log_softmax(values))
    # An image one classifier could not read gets no ranking: the metric counts it wrong, as for one.
    rankings = {image_id: top_classes(log_mean_exp(values)) for image_id, values in log_probabilities.items()
                if len(values) == len(files)}
    return rankings, f"ensemble of {len(files)} ({', '.join(names)})", f"ensemble of classifiers {', '.join(files)}"


def classifier_rankings(spec: str, cfg, synsets: Synsets, device: torch.device,
                        progress: bool = True) -> tuple[dict[str, list[int]], str]:
    """{image id: the classifier's top-5 class indices} on the same val images, and its network's name."""
    scores, name = classifier_scores(spec, cfg, synsets, device, progress)
    return {image_id: top_classes(values) for image_id, values in scores.items()}, name


def log_softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float64)
    return scores - np.logaddexp.reduce(scores)


def log_mean_exp(log_probabilities: list[np.ndarray]) -> np.ndarray:
    """The log of the classifiers' mean probabilities, in log space: probabilities formed first underflow
    to 0 far below the best class, and the top-5 would be decided among ties."""
    return np.logaddexp.reduce(np.stack(log_probabilities), axis=0) - np.log(len(log_probabilities))


@torch.inference_mode()
def classifier_scores(spec: str, cfg, synsets: Synsets, device: torch.device,
                      progress: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """{image id: the classifier's class scores (K,), whose softmax is its probabilities averaged over its
    test views} on the localizer's val images, gathered from every process, and its network's name."""
    model, cls_cfg = load_trained_classifier(spec, synsets)
    model.to(device).eval()
    # The classifier's own input settings, on the localizer's val images, tested as classifier.mode says.
    cls_cfg.data.root, cls_cfg.data.synthetic = cfg.data.root, ""
    cls_cfg.test.mode, cls_cfg.test.max_images = cfg.classifier.mode, cfg.test.max_images
    dataset = build_test_set(cls_cfg, synsets)
    loader = build_test_loader(dataset, cls_cfg.test.ims_per_batch, cfg.data.num_workers)
    scores = {}
    for batch in tqdm(loader, desc=f"classify {cls_cfg.test.mode}", leave=False,
                      disable=not (progress and dist_utils.is_main_process())):
        samples = [s for s in batch if s["views"] is not None]
        if samples:
            values = batch_scores(model, samples, cls_cfg.test.mode, cls_cfg.test.dense_flip).float().cpu()
            scores.update({s["image_id"]: v.numpy() for s, v in zip(samples, values)})
    return dist_utils.all_gather_dict(scores), network_name(cls_cfg.model.backbone)
