"""A classification config's data: the training batches, the test sets and what checkpoints keep of them.

The trainer and the evaluation see one interface, :class:`ClassificationData`, whichever dataset the
config names; ImageNet and CIFAR differ only here, in how their files are read and viewed:

* ImageNet (the ILSVRC CLS-LOC layout): lists of image files, the paper's scale and colour augmentation,
  test views of 1 or 10 crops or the whole image at several scales; tested on the val images ("cls").
* CIFAR: the official files in memory, the paper's per-pixel mean, padding, crop and flip; tested on the
  test images ("test") and, when the training split holds some out, on the "val" images too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from resnet_engine import distributed as dist_utils
from resnet_engine.errors import UserError
from resnet_engine.loaders import build_test_loader, build_train_loader

from ..config import CIFAR_CLASSES, is_cifar
from .cifar import read_split
from .cifar_dataset import CifarDataset, build_cifar_sets
from .ilsvrc import Synsets, read_synsets
from .imagenet import ClassificationDataset, EvalTransform, TrainTransform, list_train_images, list_val_images
from .synthetic_cifar import ensure_synthetic_cifar
from .synthetic_ilsvrc import ensure_synthetic_loc

logger = logging.getLogger(__name__)


@dataclass
class ClassificationData:
    """A dataset as the trainer and the evaluation use it.

    ``test_loaders`` maps each metrics section ("cls" for the ImageNet val images; "val" and "test" for
    CIFAR) to a function returning this process's share of its images; the first section chooses
    model_best.pth. ``meta`` is saved in checkpoints: the classes, and for CIFAR the training split's
    pixel mean, which a later evaluation must subtract again.
    """

    num_classes: int
    train_loader: Callable[[int], Iterable] | None  # start step -> the training batches from there on
    test_loaders: dict[str, Callable[[], Iterable]]
    meta: dict
    sizes: dict[str, int]  # images per split, for the log

    @property
    def primary_metric(self) -> str:
        return f"{next(iter(self.test_loaders))}/top1_acc"

    def describe(self) -> str:
        counts = ", ".join(f"{count} {name} images" for name, count in self.sizes.items())
        return f"{counts}, {self.num_classes} classes"


def build_classification_data(cfg, images_per_process: int | None, mean: np.ndarray | None = None,
                              split: str | None = None) -> ClassificationData:
    """The data of ``cfg``: with ``images_per_process`` its training loader too (else test sets only).

    CIFAR only: ``mean`` replaces the training split's own pixel mean (a trained run's), and ``split``
    ("trainval", "train", "val" or "test") tests on that split alone.
    """
    if is_cifar(cfg):
        return cifar_data(cfg, images_per_process, mean, split)
    if split is not None:
        raise UserError(f"ImageNet classifiers are tested on the val images of data.root: there is no split "
                        f"{split!r} to choose")
    return imagenet_data(cfg, images_per_process)


# --------------------------------------------------------------------------------------------- ImageNet


def prepare_data(cfg) -> Synsets:
    """Generate the synthetic set when asked (main process first), then read the class list."""
    if cfg.data.synthetic == "shapes_loc":
        dist_utils.on_main_process(lambda: ensure_synthetic_loc(cfg.data.root))
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


def imagenet_data(cfg, images_per_process: int | None) -> ClassificationData:
    synsets = prepare_data(cfg)
    num_classes = resolve_num_classes(cfg, synsets)
    test_set = build_test_set(cfg, synsets)
    sizes = {"val": len(test_set)}
    train_loader = None
    if images_per_process is not None:
        train_set = build_train_set(cfg, synsets)
        sizes = {"training": len(train_set), **sizes}

        def train_loader(start: int) -> Iterable:
            return build_train_loader(train_set, images_per_process, cfg.seed, cfg.data.num_workers, start)

    meta = {"task": "classification", "num_classes": num_classes, "wnids": list(synsets.wnids),
            "class_names": list(synsets.names), "depth": cfg.model.backbone.depth}
    return ClassificationData(
        num_classes, train_loader,
        {"cls": lambda: build_test_loader(test_set, cfg.test.ims_per_batch, cfg.data.num_workers)}, meta, sizes)


# --------------------------------------------------------------------------------------------- CIFAR


def cifar_root(cfg) -> str:
    """``data.root``, or the embedded synthetic CIFAR-10 (generated by the main process on first use)."""
    if cfg.data.root:
        return cfg.data.root
    if cfg.data.dataset != "cifar10":
        raise UserError(f"data.dataset={cfg.data.dataset} needs data.root, the folder of the official CIFAR-100 "
                        f"files (cifar-100-binary or cifar-100-python): the embedded synthetic set is a CIFAR-10")
    return dist_utils.on_main_process(ensure_synthetic_cifar)


def cifar_data(cfg, images_per_process: int | None, mean: np.ndarray | None = None,
               split: str | None = None) -> ClassificationData:
    num_classes = CIFAR_CLASSES[cfg.data.dataset]
    val_images = cfg.data.val_images or None
    train_split = cfg.data.train_split
    # The held-out images, when there are any, are tested first: they choose model_best.pth.
    first = split or ("val" if train_split == "train" else "test")
    sets = build_cifar_sets(cifar_root(cfg), train_split, first, val_images, num_classes, mean)
    test_sets = {first: sets.test}
    if split is None and first == "val":
        test_sets["test"] = CifarDataset(read_split(sets.source, "test"), sets.mean, train=False,
                                         class_names=sets.test.class_names)
    train_loader = None
    sizes = {name: len(dataset) for name, dataset in test_sets.items()}
    if images_per_process is not None:
        sizes = {"training": len(sets.train), **sizes}

        def train_loader(start: int) -> Iterable:
            return build_train_loader(sets.train, images_per_process, cfg.seed, cfg.data.num_workers, start,
                                      whole_batches=True)

    def test_loader(dataset: CifarDataset) -> Callable[[], Iterable]:
        return lambda: build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers, whole_batches=True)

    meta = {"task": "classification", "dataset": cfg.data.dataset, "num_classes": num_classes,
            "class_names": list(sets.train.class_names or []), "depth": cfg.model.backbone.depth,
            "pixel_mean": torch.from_numpy(np.ascontiguousarray(sets.mean, dtype=np.float32))}
    return ClassificationData(num_classes, train_loader, {name: test_loader(d) for name, d in test_sets.items()},
                              meta, sizes)
