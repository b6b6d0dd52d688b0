"""The datasets of a detection config (generating the synthetic one on first use) and its training loader."""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass

from pycocotools.coco import COCO

from resnet_engine import distributed as dist_utils
from resnet_engine import loaders
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError

from ..config import extra_train_sets
from .augment import build_augmentations
from .coco import CategoryMap, CocoDetection, load_coco
from .datasets import ConcatDetection, align_test_categories, labels_by_name
from .imagenet_det import read_imagenet_det_split
from .shapes import ensure_shapes, ensure_shapes_det, ensure_shapes_voc
from .transforms import EvalTransform, TrainTransform
from .voc import read_voc_split
from .yolo import read_yolo_split

logger = logging.getLogger(__name__)


def ensure_synthetic(cfg) -> None:
    """Generate the synthetic dataset named by data.synthetic if its files are missing: on the main
    process, the others waiting (every process writing the same files would collide)."""
    dist_utils.on_main_process(lambda: generate_synthetic(cfg))


def generate_synthetic(cfg) -> None:
    if cfg.data.synthetic == "shapes":
        root = os.path.dirname(os.path.dirname(cfg.data.train.ann_file))
        ensure_shapes(root)
    elif cfg.data.synthetic == "shapes_voc":
        ensure_shapes_voc(cfg.data.train.root)
    elif cfg.data.synthetic == "shapes_det":
        ensure_shapes_det(cfg.data.train.root)


def category_map_for(cfg, dataset_coco=None) -> CategoryMap | None:
    if cfg.model.labels_are_category_ids:
        if cfg.model.num_classes <= 0:
            raise UserError("model.labels_are_category_ids=true needs model.num_classes (the largest category id)")
        names = None
        if dataset_coco is not None:
            check_ids_within_classes(dataset_coco.dataset["categories"], cfg.model.num_classes)
            by_id = {c["id"]: c.get("name", str(c["id"])) for c in dataset_coco.dataset["categories"]}
            names = [by_id.get(i, str(i)) for i in range(1, cfg.model.num_classes + 1)]
        return CategoryMap.identity(cfg.model.num_classes, names)
    return None


def check_ids_within_classes(categories: list[dict], num_classes: int) -> None:
    """With labels_are_category_ids a category id is the model's label: an id outside 1..num_classes
    would have every box of its class dropped as unknown."""
    outside = [c for c in categories if not 1 <= c["id"] <= num_classes]
    if not outside:
        return
    names = ", ".join(f"'{c.get('name', c['id'])}' (id {c['id']})" for c in outside[:3])
    fix = ("renumber the categories from 1 (label 0 is the background), or set model.labels_are_category_ids=false"
           if any(c["id"] < 1 for c in outside) else
           f"set model.num_classes={max(c['id'] for c in categories)} (the largest category id)")
    raise ConfigError(f"model.labels_are_category_ids=true makes each category id a label in 1..model.num_classes="
                      f"{num_classes}, and the training categories {names} lie outside it: {fix}")


@dataclass
class AnnotationSource:
    """One set's annotations as read: the COCO object, what messages call the set (its json, its YOLO
    labels folder, or its VOCdevkit folder and split), its image folder, and whether its boxes refer to
    the upright images (YOLO)."""

    coco: COCO
    name: str
    img_dir: str
    upright: bool


def read_annotations(dataset_cfg, key_prefix: str, on_bad_image: str, train: bool = True) -> AnnotationSource:
    """The annotations of one data.train/data.test-like section, COCO json, YOLO labels, VOC or ImageNet DET."""
    if dataset_cfg.format == "imagenet_det":
        coco = read_imagenet_det_split(dataset_cfg.root, dataset_cfg.split, dataset_cfg.names, train, on_bad_image,
                                       key_prefix)
        return AnnotationSource(coco, f"{dataset_cfg.root} ({dataset_cfg.split})", dataset_cfg.root, upright=False)
    if dataset_cfg.format == "voc":
        coco = read_voc_split(dataset_cfg.root, dataset_cfg.split, dataset_cfg.names, train, on_bad_image, key_prefix)
        return AnnotationSource(coco, f"{dataset_cfg.root} ({dataset_cfg.split})", dataset_cfg.root, upright=False)
    if dataset_cfg.format == "yolo":
        coco, images_dir, labels_dir = read_yolo_split(dataset_cfg.root, dataset_cfg.split, dataset_cfg.names,
                                                       on_bad_image, key_prefix)
        return AnnotationSource(coco, labels_dir, images_dir, upright=True)
    coco = load_coco(dataset_cfg.ann_file, f"{key_prefix}.ann_file", index_annotations=not train)
    return AnnotationSource(coco, dataset_cfg.ann_file, dataset_cfg.img_dir, upright=False)


def dataset_of(source: AnnotationSource, cfg, key_prefix: str, transform, category_map: CategoryMap, train: bool,
               labels_by_category: dict[int, int] | None = None, max_images: int = 0) -> CocoDetection:
    return CocoDetection(source.name, source.img_dir, transform, category_map=category_map, train=train,
                         filter_empty=cfg.data.filter_empty, on_bad_image=cfg.data.on_bad_image, key_prefix=key_prefix,
                         max_images=max_images, coco=source.coco, labels_by_category=labels_by_category,
                         upright=source.upright)


def train_transform(cfg) -> TrainTransform:
    """The paper's random resize and flip of input.min_size_train, max_size_train and random_flip, then
    the augmentations of input.augment_presets and input.augmentations."""
    return TrainTransform(list(cfg.input.min_size_train), cfg.input.max_size_train, cfg.input.random_flip,
                          build_augmentations(cfg.input))


def build_train_dataset(cfg) -> CocoDetection | ConcatDetection:
    """data.train, followed by the sets of data.train_extra with their categories matched by name."""
    ensure_synthetic(cfg)
    transform = train_transform(cfg)
    first = read_annotations(cfg.data.train, "data.train", cfg.data.on_bad_image)
    category_map = category_map_for(cfg, first.coco) or CategoryMap.from_coco(first.coco)
    parts = [dataset_of(first, cfg, "data.train", transform, category_map, train=True)]
    for index, (dataset_cfg, rename) in enumerate(extra_train_sets(cfg)):
        key = f"data.train_extra[{index}]"
        source = read_annotations(dataset_cfg, key, cfg.data.on_bad_image)
        labels = labels_by_name(category_map, source.coco, rename, source.name, first.name,
                                can_add=not cfg.model.labels_are_category_ids)
        parts.append(dataset_of(source, cfg, key, transform, category_map, train=True, labels_by_category=labels))
    check_class_count(cfg, category_map)
    if len(parts) == 1:
        if not cfg.model.labels_are_category_ids:  # there, every id up to num_classes is a class anyway
            warn_of_classes_without_boxes(first.coco, first.name)
        return parts[0]
    logger.info("training on %d sets: %s", len(parts),
                ", ".join(f"{part.ann_file} ({len(part)} images)" for part in parts))
    return ConcatDetection(parts)


def check_class_count(cfg, category_map: CategoryMap) -> None:
    """A model of fewer classes than the training labels would fail at the first loss; one of more
    would have outputs that are never trained (and no category id to score their detections by)."""
    given, found = cfg.model.num_classes, category_map.num_classes
    if cfg.model.labels_are_category_ids or given in (0, found):
        return
    if given < found:
        raise ConfigError(f"model.num_classes={given} is below the {found} classes of the training data "
                          f"({', '.join(category_map.names)}): set model.num_classes=0 to take their number")
    raise ConfigError(f"model.num_classes={given} is above the {found} classes of the training data (the background "
                      f"is not counted here, unlike torchvision's num_classes): set model.num_classes=0 to take "
                      f"their number")


def warn_of_classes_without_boxes(coco: COCO, name: str) -> None:
    """A category that no training box belongs to becomes a class that is never trained (an exporter's
    'superclass' entry, a class left out of a subset)."""
    counts = Counter(ann.get("category_id") for ann in coco.dataset.get("annotations", []))
    empty = [c for c in coco.dataset["categories"] if counts[c["id"]] == 0]
    if empty:
        names = ", ".join(f"'{c.get('name', c['id'])}' (id {c['id']})" for c in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        warnings.warn(f"{name}: {len(empty)} categor{'y has' if len(empty) == 1 else 'ies have'} no box: {names}"
                      f"{more}; each is a class of the model that training never sees: remove it from the "
                      f"categories if it is not meant to be detected", stacklevel=2)


def build_test_dataset(cfg, category_map: CategoryMap, resize: bool) -> CocoDetection:
    """The test set; ``resize=False`` keeps the images as read, for test-time multi-scale and refinement,
    which resize them themselves (detection.modeling.build.test_needs_original_images)."""
    ensure_synthetic(cfg)
    transform = EvalTransform(cfg.input.min_size_test, cfg.input.max_size_test) if resize else None
    source = read_annotations(cfg.data.test, "data.test", cfg.data.on_bad_image, train=False)
    align_test_categories(source.coco, category_map, source.name)
    return dataset_of(source, cfg, "data.test", transform, category_map, train=False, max_images=cfg.test.max_images)


def build_train_loader(dataset: CocoDetection | ConcatDetection, cfg, images_per_process: int, start_step: int = 0):
    """The training batches of ``cfg`` (resnet_engine.loaders), grouped by aspect ratio when
    data.aspect_ratio_grouping is on."""
    aspect_ratios = dataset.aspect_ratios() if cfg.data.aspect_ratio_grouping else None
    return loaders.build_train_loader(dataset, images_per_process, cfg.seed, cfg.data.num_workers, start_step,
                                      aspect_ratios)
