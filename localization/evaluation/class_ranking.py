"""The classes a localizer's guesses are made for: a classifier's top-5 (``classifier.weights``, a checkpoint of
tools/train_cls.py, tested on the same val images with its own input settings as ``classifier.mode`` says) or,
without one, the localizer's own per-class scores, and the output says so."""

from __future__ import annotations

import torch
from tqdm import tqdm

from classification.data.ilsvrc import Synsets
from classification.data.loaders import build_test_set
from classification.evaluation import batch_scores
from resnet_engine import distributed as dist_utils
from resnet_engine.loaders import build_test_loader

from ..weights import load_trained_classifier
from .submission import network_name, top_classes


def class_ranking(classifier: str, cfg, synsets: Synsets, device: torch.device,
                  progress: bool = True) -> tuple[dict[str, list[int]] | None, str, str]:
    """(the classifier's {image id: top-5 class indices}, or None to rank by the localizer's own scores;
    the name of what ranked the classes in the paper's table; a sentence saying the same)."""
    if not classifier:
        return None, "RPN scores", "the RPN's own per-class max scores (no classifier given)"
    rankings, name = classifier_rankings(classifier, cfg, synsets, device, progress)
    return rankings, name, f"classifier {classifier}"


@torch.inference_mode()
def classifier_rankings(spec: str, cfg, synsets: Synsets, device: torch.device,
                        progress: bool = True) -> tuple[dict[str, list[int]], str]:
    """{image id: the classifier's top-5 class indices} on the same val images, and its network's name."""
    model, cls_cfg = load_trained_classifier(spec, synsets)
    model.to(device).eval()
    # The classifier's own input settings, on the localizer's val images, tested as classifier.mode says.
    cls_cfg.data.root, cls_cfg.data.synthetic = cfg.data.root, ""
    cls_cfg.test.mode, cls_cfg.test.max_images = cfg.classifier.mode, cfg.test.max_images
    dataset = build_test_set(cls_cfg, synsets)
    loader = build_test_loader(dataset, cls_cfg.test.ims_per_batch, cfg.data.num_workers)
    rankings = {}
    for batch in tqdm(loader, desc=f"classify {cls_cfg.test.mode}", leave=False,
                      disable=not (progress and dist_utils.is_main_process())):
        samples = [s for s in batch if s["views"] is not None]
        if samples:
            values = batch_scores(model, samples, cls_cfg.test.mode, cls_cfg.test.dense_flip).float().cpu()
            rankings.update({s["image_id"]: top_classes(v.numpy()) for s, v in zip(samples, values)})
    return dist_utils.all_gather_dict(rankings), network_name(cls_cfg.model.backbone)
