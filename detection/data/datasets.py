"""Several training sets read as one: their categories matched by name, their images concatenated."""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import warnings

import numpy as np
import torch
from pycocotools.coco import COCO

from .coco import AnnotationError, CategoryMap, CocoDetection, index_seed

logger = logging.getLogger(__name__)


def labels_by_name(category_map: CategoryMap, coco: COCO, rename: dict[str, str], source: str, first_source: str,
                   can_add: bool) -> dict[int, int]:
    """{category id of ``coco``: label of ``category_map``}, matching each category by its name after
    ``rename`` ({name in the file: name in the model}). A name the map lacks becomes a new label after
    the others, with the next free category id (the map grows), unless ``can_add`` is false."""
    names = {category["id"]: category.get("name", str(category["id"])) for category in coco.dataset["categories"]}
    check_renames(rename, set(names.values()), set(category_map.names), source, first_source)
    label_of_name = {}
    for label, name in enumerate(category_map.names, start=1):
        label_of_name.setdefault(name, label)
    labels, added = {}, []
    for category_id in sorted(names):
        name = rename.get(names[category_id], names[category_id])
        if category_map.names.count(name) > 1:
            raise AnnotationError(f"{first_source}: the category name '{name}' is given to several ids: give each "
                                  f"category its own name to match the categories of {source} by name")
        if name not in label_of_name:
            if not can_add:
                raise AnnotationError(
                    f"{source}: category '{name}' is not in {first_source}, and model.labels_are_category_ids=true "
                    f"keeps the labels to its ids: map it onto one of its names with rename: {{{name}: NAME}}")
            category_map.category_ids.append(max(category_map.category_ids, default=0) + 1)
            category_map.names.append(name)
            label_of_name[name] = category_map.num_classes
            added.append(f"{name} (category id {category_map.category_ids[-1]})")
        labels[category_id] = label_of_name[name]
    if added:
        logger.info("%s: categories that %s lacks added as new classes: %s", source, first_source, ", ".join(added))
    return labels


def check_renames(rename: dict[str, str], file_names: set[str], model_names: set[str], source: str,
                  first_source: str) -> None:
    """Each renamed category exists in the file, and each new name in the model: a misspelt one would
    otherwise leave a class apart without a word."""
    for old, new in rename.items():
        if old not in file_names:
            raise AnnotationError(f"{source}: rename gives '{old}', which is no category of this file (its "
                                  f"categories: {', '.join(sorted(file_names))})")
        if new not in model_names:
            raise AnnotationError(f"{source}: rename maps '{old}' to '{new}', which is no category of {first_source} "
                                  f"(its categories: {', '.join(sorted(model_names))})")


def align_test_categories(coco: COCO, category_map: CategoryMap, source: str) -> None:
    """Prepare a test set's categories for scoring the model's detections by category id.

    A category of the model that the test set lacks (a class added from another training set, say)
    joins it without objects: COCO AP leaves such a class out, and its detections are not scored,
    as one log line says. A test set that shares no category id with the model, or that gives one of
    the model's names another id, would be scored against the wrong classes: that is an error."""
    test_names = {category["id"]: category.get("name", str(category["id"])) for category in coco.dataset["categories"]}
    model_names = dict(zip(category_map.category_ids, category_map.names))
    if not set(model_names) & set(test_names):
        raise AnnotationError(f"{source}: none of its category ids ({', '.join(map(str, sorted(test_names)))}) is one "
                              f"of the model's ({', '.join(map(str, model_names))}): give the test set the category "
                              "ids of the training set")
    ids_of_test_names = {name: category_id for category_id, name in test_names.items()}
    missing = [category_id for category_id in model_names if category_id not in test_names]
    for category_id in missing:
        if model_names[category_id] in ids_of_test_names:
            raise AnnotationError(f"{source}: category '{model_names[category_id]}' has id "
                                  f"{ids_of_test_names[model_names[category_id]]} here but {category_id} in the "
                                  "model: give the test set the category ids of the training set")
    if missing:
        coco.dataset["categories"] = coco.dataset["categories"] + [
            {"id": category_id, "name": model_names[category_id]} for category_id in missing]
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        logger.info("%s lacks the model's categories %s: detections of them are left out of the scores", source,
                    ", ".join(f"{category_id} ({model_names[category_id]})" for category_id in missing))
    warn_of_test_classes_not_in_the_model(coco, model_names, source)
    renamed = [f"id {category_id} is '{test_names[category_id]}' here and '{name}' in the model"
               for category_id, name in model_names.items()
               if category_id in test_names and name != str(category_id) and test_names[category_id] != name]
    if renamed:
        warnings.warn(f"{source}: {'; '.join(renamed)}: is this the test set of the training set's categories?",
                      stacklevel=2)


def warn_of_test_classes_not_in_the_model(coco: COCO, model_names: dict[int, str], source: str) -> None:
    """The scores cover every category of the test set: the objects of a category the model was not trained
    on are all missed, and its AP of 0 is in the mean. Said once, with the categories and their counts."""
    foreign = {}
    for annotation in coco.dataset.get("annotations", []):
        category_id = annotation.get("category_id")
        if category_id not in model_names and not annotation.get("iscrowd", 0):
            foreign[category_id] = foreign.get(category_id, 0) + 1
    if not foreign:
        return
    names = {category["id"]: category.get("name", str(category["id"])) for category in coco.dataset["categories"]}
    listed = ", ".join(f"{category_id} ({names.get(category_id, '?')}, {count} objects)"
                       for category_id, count in sorted(foreign.items(), key=lambda item: str(item[0])))
    warnings.warn(f"{source}: categories {listed} are not the model's: their objects are scored as missed, and "
                  "their AP of 0 is in the mean; to score the model's categories alone, remove the others from the "
                  "test set's json", stacklevel=3)


class ConcatDetection(torch.utils.data.Dataset):
    """Training sets read as one, item by item in their order. All parts share one category map (their
    labels), and the image ids of each part after the first are shifted past those before it so that
    no two images share an id; the first part keeps its own."""

    def __init__(self, parts: list[CocoDetection]):
        self.parts = parts
        self.category_map = parts[0].category_map
        self.starts = np.cumsum([0] + [len(part) for part in parts]).tolist()
        self.id_offsets = image_id_offsets(parts)

    def __len__(self) -> int:
        return self.starts[-1]

    def aspect_ratios(self) -> np.ndarray:
        return np.concatenate([part.aspect_ratios() for part in self.parts])

    def image_ids(self) -> list[int]:
        """The image ids of every item, in item order."""
        return [image_id + offset for part, offset in zip(self.parts, self.id_offsets)
                for image_id in part.records.column("image_id").tolist()]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        part = bisect.bisect_right(self.starts, index) - 1
        sample = self.parts[part][(index - self.starts[part], seed)]
        sample["image_id"] += self.id_offsets[part]
        return sample


def image_id_offsets(parts: list[CocoDetection]) -> list[int]:
    """What to add to each part's image ids: 0 for the first, then each part starts after the largest
    id so far."""
    offsets, next_free = [], None
    for part in parts:
        ids = part.records.column("image_id").tolist()
        offset = 0 if next_free is None else next_free - min(ids)
        offsets.append(offset)
        next_free = max(ids) + offset + 1
    return offsets
