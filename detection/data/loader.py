"""The datasets of a detection config (generating the synthetic one on first use) and its training loader."""

from __future__ import annotations

import os

from resnet_engine import loaders
from resnet_engine.errors import UserError

from .augment import build_augmentations
from .coco import CategoryMap, CocoDetection
from .shapes import ensure_shapes
from .transforms import EvalTransform, TrainTransform


def ensure_synthetic(cfg) -> None:
    """Generate the synthetic dataset named by data.synthetic if its files are missing."""
    if cfg.data.synthetic == "shapes":
        root = os.path.dirname(os.path.dirname(cfg.data.train.ann_file))
        ensure_shapes(root)


def category_map_for(cfg, dataset_coco=None) -> CategoryMap | None:
    if cfg.model.labels_are_category_ids:
        if cfg.model.num_classes <= 0:
            raise UserError("model.labels_are_category_ids=true needs model.num_classes (the largest category id)")
        names = None
        if dataset_coco is not None:
            by_id = {c["id"]: c.get("name", str(c["id"])) for c in dataset_coco.dataset["categories"]}
            names = [by_id.get(i, str(i)) for i in range(1, cfg.model.num_classes + 1)]
        return CategoryMap.identity(cfg.model.num_classes, names)
    return None


def train_transform(cfg) -> TrainTransform:
    """The paper's random resize and flip of input.min_size_train, max_size_train and random_flip, then
    the augmentations of input.augment_presets and input.augmentations."""
    return TrainTransform(list(cfg.input.min_size_train), cfg.input.max_size_train, cfg.input.random_flip,
                          build_augmentations(cfg.input))


def build_train_dataset(cfg) -> CocoDetection:
    ensure_synthetic(cfg)
    transform = train_transform(cfg)
    dataset = CocoDetection(cfg.data.train.ann_file, cfg.data.train.img_dir, transform, train=True,
                            filter_empty=cfg.data.filter_empty, on_bad_image=cfg.data.on_bad_image,
                            key_prefix="data.train")
    identity = category_map_for(cfg, dataset.coco)
    if identity is not None:
        dataset = CocoDetection(cfg.data.train.ann_file, cfg.data.train.img_dir, transform, category_map=identity,
                                train=True, filter_empty=cfg.data.filter_empty, on_bad_image=cfg.data.on_bad_image,
                                key_prefix="data.train")
    return dataset


def build_test_dataset(cfg, category_map: CategoryMap, resize: bool) -> CocoDetection:
    """The test set; ``resize=False`` keeps the images as read, for test-time multi-scale and refinement,
    which resize them themselves (detection.modeling.build.test_needs_original_images)."""
    ensure_synthetic(cfg)
    transform = EvalTransform(cfg.input.min_size_test, cfg.input.max_size_test) if resize else None
    return CocoDetection(cfg.data.test.ann_file, cfg.data.test.img_dir, transform, category_map=category_map,
                         train=False, on_bad_image=cfg.data.on_bad_image, key_prefix="data.test",
                         max_images=cfg.test.max_images)


def build_train_loader(dataset: CocoDetection, cfg, images_per_process: int, start_step: int = 0):
    """The training batches of ``cfg`` (resnet_engine.loaders), grouped by aspect ratio when
    data.aspect_ratio_grouping is on."""
    aspect_ratios = dataset.aspect_ratios() if cfg.data.aspect_ratio_grouping else None
    return loaders.build_train_loader(dataset, images_per_process, cfg.seed, cfg.data.num_workers, start_step,
                                      aspect_ratios)
