"""COCO-format detection datasets: json annotations plus an image folder."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import numbers
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import orjson
import torch
from pycocotools.coco import COCO

from resnet_engine.errors import UserError
from resnet_engine.flat_records import FlatRecords, garbage_collection_paused

from .image_io import BadImageError, read_image, to_chw_tensor

logger = logging.getLogger(__name__)


class AnnotationError(UserError):
    pass


def load_coco(ann_file: str, key_hint: str = "data.train.ann_file", index_annotations: bool = True) -> COCO:
    """Read a COCO json file, with a clear message for a missing or malformed file. A training set passes
    ``index_annotations=False`` (see coco_from_dict)."""
    if not os.path.isfile(ann_file):
        raise AnnotationError(f"annotation file not found: {ann_file} (set {key_hint}=/path/to/instances.json)")
    with garbage_collection_paused():  # a million small objects, all kept
        try:
            data = read_json(ann_file)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{ann_file}: invalid JSON at line {error.lineno} column {error.colno}") from None
        except UnicodeDecodeError as error:
            kind = " (a gzip archive: decompress it first)" if error.object[:2] == b"\x1f\x8b" else ""
            raise AnnotationError(f"{ann_file}: not a UTF-8 JSON file{kind}; byte {error.start} cannot be "
                                  f"decoded: give the COCO json as UTF-8 text") from None
        for key in ("images", "categories"):
            if not isinstance(data, dict) or key not in data:
                raise AnnotationError(f"{ann_file}: not a COCO detection file (no '{key}' list)"
                                      + results_file_hint(data))
        return coco_from_dict(data, ann_file, index_annotations)


def read_json(path: str):
    """The json file's content. orjson reads COCO train2017's 450 MB in about three quarters of the standard
    library's time; what orjson refuses and the standard library accepts (NaN, Infinity, integers beyond 64
    bits) is read by the standard library, which also words the message of a file that is not json."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8"))


def lists_annotations(coco: COCO) -> bool:
    """Whether the json has an 'annotations' list at all: COCO's image_info files (test-dev) list the images
    of a split scored by the evaluation server, without one."""
    return "annotations" in coco.dataset


def results_file_hint(data) -> str:
    """What to say of a json that is a list of detections (a results file) where annotations are read."""
    if isinstance(data, list) and data and isinstance(data[0], dict) and {"bbox", "score"} <= set(data[0]):
        return ": it is a list of detections, a results file (were --gt and --det swapped?)"
    return ""


def coco_from_dict(data: dict, source: str, index_annotations: bool = True) -> COCO:
    """A pycocotools COCO object of a COCO-format dict (read from ``source``, which messages name),
    its entries checked first.

    ``index_annotations=False`` fills only the image and category indexes (``imgs``, ``cats``) and
    leaves pycocotools' per-annotation ones (``anns``, ``imgToAnns``, ``catToImgs``) empty: a training
    set reads its annotations from the json's list (AnnotationArrays), and building those indexes took
    2 s of the 7 s of reading a COCO-train-sized file. The evaluation scores against a full index."""
    check_entries(source, data)
    coco = COCO()
    coco.dataset = data
    if index_annotations:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    else:
        coco.imgs = {image["id"]: image for image in data["images"]}
        coco.cats = {category["id"]: category for category in data["categories"]}
    return coco


def warn_of_box_areas(source: str, annotations: list[dict]) -> None:
    """COCO's APs, APm and APl split the objects by their "area", which COCO gives as the mask's: a test
    json without it is scored with the box's area (coco_eval.scorable_copy), which this says."""
    missing = sum(1 for ann in annotations if "area" not in ann)
    if missing:
        warnings.warn(f"{source}: {missing} of {len(annotations)} annotations have no 'area': the COCO "
                      "metrics' small/medium/large split (APs, APm, APl) uses their box area (width x height; "
                      "COCO's own files give the mask's area, which is smaller)", stacklevel=3)


# Per list of a COCO json: what one entry is called, the keys it needs, and the hint when it lacks one.
REQUIRED_KEYS = {
    "images": ("image", ("id", "file_name"), "each image needs its id and file_name, its path in the image folder"),
    "categories": ("category", ("id",), "each category needs its id, the category_id of its annotations"),
    "annotations": ("annotation", ("id", "image_id", "category_id", "bbox"),
                    "each annotation needs id, image_id, category_id and bbox [x, y, width, height]"),
}


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_box(bbox) -> bool:
    """A list of 4 numbers. Exact types are tested first: json gives int and float, and the generic test
    alone takes seconds on the million boxes of a large set."""
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(type(v) is float or type(v) is int or is_number(v) for v in bbox))


def entry_problem(kind: str, entry) -> str | None:
    """What is wrong with one entry of the json's ``kind`` list, with the fix; None when it is fine.
    Non-finite box values are not a problem here: they are dropped and counted with the degenerate boxes."""
    _, keys, hint = REQUIRED_KEYS[kind]
    if not isinstance(entry, dict):
        return f"is not an object ({hint})"
    missing = [key for key in keys if key not in entry]
    if missing:
        return f"lacks {', '.join(missing)} ({hint})"
    id_keys = ("image_id", "category_id") if kind == "annotations" else ("id",)
    for key in id_keys:
        if type(entry[key]) is not int:  # the COCO results format and both scoring libraries take integers
            return f"has {key} {entry[key]!r}: ids are integers in COCO files (number the entries 1, 2, ...)"
    if kind == "annotations" and not is_box(entry["bbox"]):
        return f"has bbox {entry['bbox']!r}: give 4 numbers [x, y, width, height]"
    if kind == "annotations" and entry.get("iscrowd", 0) not in (0, 1):  # True and False are 1 and 0 too
        # A string "0" would read as true and make the object a crowd region, never a positive.
        return f"has iscrowd {entry['iscrowd']!r}: give 0 (an object) or 1 (a crowd region)"
    if kind == "images" and not all(is_number(entry.get(key, 0)) and entry.get(key, 0) >= 0
                                    for key in ("width", "height")):
        return f"has width {entry.get('width')!r} and height {entry.get('height')!r}: give them in pixels"
    return None


def check_entries(ann_file: str, data: dict) -> None:
    """One line naming the first malformed image, category or annotation (by index and id) and the fix."""
    for kind in REQUIRED_KEYS:
        entries = data.get(kind, [])  # only 'annotations' may be absent (load_coco requires the others)
        if not isinstance(entries, list):
            raise AnnotationError(f"{ann_file}: '{kind}' is not a list")
        plain = PLAIN_ENTRY.get(kind, lambda entry: False)
        for index, entry in enumerate(entries):
            if plain(entry):
                continue
            problem = entry_problem(kind, entry)
            if problem:
                entry_id = entry.get("id") if isinstance(entry, dict) else None
                raise AnnotationError(f"{ann_file}: {REQUIRED_KEYS[kind][0]} #{index} (id {entry_id}) {problem}")
    for kind in ("images", "categories"):
        check_unique_ids(ann_file, kind, data.get(kind, []))


def check_unique_ids(ann_file: str, kind: str, entries: list[dict]) -> None:
    """Two images or two categories of one id: their annotations could not be told apart."""
    seen = {}
    for index, entry in enumerate(entries):
        first = seen.setdefault(entry["id"], index)
        if first != index:
            what = REQUIRED_KEYS[kind][0]
            raise AnnotationError(f"{ann_file}: {what} #{index} has id {entry['id']}, as {what} #{first} has: "
                                  f"give each {what} an id of its own")


# The quick tests of check_entries: an entry that passes one is one that entry_problem passes too, so only
# the others get the full check. Exact types written out, because a large set has a million annotations:
# the full check of each took seconds.
def is_int_or_float(value) -> bool:
    return type(value) is float or type(value) is int


def plain_annotation(entry) -> bool:
    """A dict with id, image_id, category_id, a bbox of 4 ints or floats and an iscrowd of 0 or 1 if any."""
    if type(entry) is not dict or type(entry.get("image_id")) is not int or type(entry.get("category_id")) is not int:
        return False
    if "id" not in entry or entry.get("iscrowd", 0) not in (0, 1):
        return False
    bbox = entry.get("bbox")
    return (type(bbox) is list and len(bbox) == 4 and is_int_or_float(bbox[0]) and is_int_or_float(bbox[1])
            and is_int_or_float(bbox[2]) and is_int_or_float(bbox[3]))


def plain_image(entry) -> bool:
    """A dict with an int id and file_name, and a width and height that are ints or floats when given."""
    return (type(entry) is dict and type(entry.get("id")) is int and "file_name" in entry
            and is_int_or_float(entry.get("width", 0)) and is_int_or_float(entry.get("height", 0))
            and entry.get("width", 0) >= 0 and entry.get("height", 0) >= 0)


PLAIN_ENTRY = {"annotations": plain_annotation, "images": plain_image}


@dataclass
class CategoryMap:
    """Contiguous training labels 1..K (0 is background) <-> dataset category ids."""

    category_ids: list[int]
    names: list[str] = field(default_factory=list)

    @classmethod
    def from_coco(cls, coco: COCO) -> CategoryMap:
        cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
        return cls([c["id"] for c in cats], [c.get("name", str(c["id"])) for c in cats])

    @classmethod
    def identity(cls, num_classes: int, names: list[str] | None = None) -> CategoryMap:
        return cls(list(range(1, num_classes + 1)), names or [str(i) for i in range(1, num_classes + 1)])

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_of(self) -> dict[int, int]:
        return {cat: index + 1 for index, cat in enumerate(self.category_ids)}

    def category_of(self, label: int) -> int:
        return self.category_ids[label - 1]

    def name_of(self, label: int) -> str:
        return self.names[label - 1] if 0 < label <= len(self.names) else str(label)


@dataclass
class AnnotationStats:
    dropped: int = 0
    clipped: int = 0
    unknown_category: int = 0
    unknown_image: int = 0  # annotations whose image_id is not in the json's images
    dropped_example: object = None  # the id of one dropped annotation, to look it up by

    def any(self) -> bool:
        return bool(self.dropped or self.clipped or self.unknown_category or self.unknown_image)

    def describe(self, train: bool = True) -> str:
        example = f", e.g. annotation id {self.dropped_example}" if self.dropped_example is not None else ""
        # A test set's scores still count the objects of categories the model lacks, as missed.
        unknown = "ignored" if train else "not the model's (scored as missed)"
        return (f"{self.dropped} boxes dropped (no area or not finite{example}), {self.clipped} clipped to the image, "
                f"{self.unknown_category} with unknown category ids {unknown}, {self.unknown_image} of image ids "
                "not in 'images' ignored")


@dataclass
class AnnotationArrays:
    """The annotations of a COCO index, image after image in image id order, each image's in the order of
    the json: the position of the image (in that order) of each, its [x, y, w, h], label (-1: a category
    without one) and crowd flag."""

    owner: np.ndarray
    xywh: np.ndarray
    label: np.ndarray
    crowd: np.ndarray
    json_index: np.ndarray  # the position of each in the json's 'annotations' list

    @classmethod
    def of(cls, coco: COCO, image_ids: list, label_of: dict) -> AnnotationArrays:
        """Annotations of images not in ``image_ids`` are left out. One comprehension per column over the
        json's list, then a stable sort by image: a third of the time of appending box by box."""
        anns = coco.dataset.get("annotations", [])
        position_of = {image_id: position for position, image_id in enumerate(image_ids)}
        owner = np.array([position_of.get(ann["image_id"], -1) for ann in anns], dtype=np.int64)
        order = np.argsort(owner, kind="stable")  # image after image, each image's in json order
        order = order[owner[order] >= 0]
        xywh = np.array([anns[k]["bbox"] for k in order.tolist()], dtype=np.float64).reshape(-1, 4)
        label = np.array([label_of.get(anns[k]["category_id"], -1) for k in order.tolist()], dtype=np.int64)
        crowd = np.array([bool(anns[k].get("iscrowd", 0)) for k in order.tolist()], dtype=bool)
        return cls(owner[order], xywh, label, crowd, order)


def sanitize_boxes(xywh: np.ndarray, widths: np.ndarray, heights: np.ndarray,
                   stats: AnnotationStats) -> tuple[np.ndarray, np.ndarray]:
    """COCO [x, y, w, h] -> (xyxy clipped to each box's image size (inf: unknown), which are kept):
    boxes with no area or non-finite values are dropped and counted, the clipped ones counted."""
    x, y, w, h = xywh.T
    box = np.stack([x, y, x + w, y + h], axis=1)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(box).all(axis=1) & (w > 0) & (h > 0)
        clipped = box.copy()
        clipped[:, 0::2] = np.clip(box[:, 0::2], 0, widths[:, None])
        clipped[:, 1::2] = np.clip(box[:, 1::2], 0, heights[:, None])
        kept = valid & (clipped[:, 2] - clipped[:, 0] >= 1e-3) & (clipped[:, 3] - clipped[:, 1] >= 1e-3)
    stats.dropped += int(np.count_nonzero(~kept))
    stats.clipped += int(np.count_nonzero(kept & (clipped != box).any(axis=1)))
    return clipped.astype(np.float32), kept


def per_image(rows: np.ndarray, owner: np.ndarray, images: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, offsets: image i's are rows offsets[i]:offsets[i + 1]) of rows that ``owner`` sorts by image."""
    offsets = np.zeros(images + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=images), out=offsets[1:])
    return rows, offsets


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO json.

    Items are requested as ``dataset[(index, seed)]`` (the seed drives augmentation) or
    ``dataset[index]``. With ``on_bad_image="skip"``, a missing or corrupt training image is replaced
    by the next good one and reported in the item's "skipped" list, and a test image gives a sample
    with "image": None (see split_unreadable); with "fail" it raises.

    Annotations that were not read from a json (YOLO labels, detection/data/yolo.py) come as ``coco``,
    ``ann_file`` then only names their source in messages. ``labels_by_category`` maps the file's
    category ids to labels of ``category_map`` when they are not its own ids (a further training set
    matched by category name, detection/data/datasets.py). ``upright``: the boxes refer to the image as a
    viewer shows it (YOLO's convention), so the EXIF orientation is applied when reading.

    The records are flat arrays (resnet_engine.flat_records) that forked loader workers share. A training
    set keeps only them (``coco`` is then None); a test set keeps the COCO index too, which the
    evaluation scores against.
    """

    def __init__(self, ann_file: str, img_dir: str, transform=None, category_map: CategoryMap | None = None,
                 train: bool = True, filter_empty: bool = False, on_bad_image: str = "skip",
                 key_prefix: str = "data.train", max_images: int = 0, coco: COCO | None = None,
                 labels_by_category: dict[int, int] | None = None, upright: bool = False):
        self.coco = coco if coco is not None else load_coco(ann_file, f"{key_prefix}.ann_file")
        if not os.path.isdir(img_dir):
            raise UserError(f"image folder not found: {img_dir} (set {key_prefix}.img_dir=/path/to/images)")
        self.ann_file = ann_file
        self.img_dir = img_dir
        self.transform = transform
        self.train = train
        self.on_bad_image = on_bad_image
        self.upright = upright
        self.category_map = category_map or CategoryMap.from_coco(self.coco)
        self.labels_by_category = labels_by_category
        self.stats = AnnotationStats()
        # Flat arrays, not a list of dicts: forked loader workers then share them instead of copying them.
        with garbage_collection_paused():
            self.records = self._build_records(filter_empty)
        if max_images:
            self.records = self.records[:max_images]
        if not self.records:
            raise AnnotationError(f"{ann_file}: no usable images")
        self._check_image_folder(key_prefix)
        if not any(len(record["boxes"]) for record in self.records) and (train or lists_annotations(self.coco)):
            # Training would run with zero box losses, and COCO AP would be undefined (-1). A test json
            # without an 'annotations' list is a split without local ground truth (the evaluator writes
            # its results file instead of a score).
            raise AnnotationError(
                f"{ann_file}: no object box in {len(self.records)} images "
                f"({len(self.coco.dataset.get('annotations', []))} annotations; "
                f"{self.stats.describe(train)}): give the objects in its 'annotations' list")
        if self.stats.any():
            warnings.warn(f"{ann_file}: {self.stats.describe(train)}", stacklevel=2)
        if not train:
            warn_of_box_areas(ann_file, self.coco.dataset.get("annotations", []))
        if train:
            # The records hold all that training reads. The index's million small dicts (at COCO size)
            # would be copied into every loader worker by its garbage collections; the evaluation
            # scores against a test set's index, which it keeps.
            self.coco = None

    def _check_image_folder(self, key_prefix: str, samples: int = 20) -> None:
        """A folder that holds none of a few images spread over the set is the wrong folder: one error now,
        rather than one warning per image (118k on COCO train) and an error at the end."""
        step = max(1, len(self.records) // samples)
        paths = [self.path_of(self.records[index]) for index in range(0, len(self.records), step)][:samples]
        if not any(os.path.isfile(path) for path in paths):
            raise UserError(f"none of {len(paths)} images of {self.ann_file} spread over the set is in {self.img_dir} "
                            f"(e.g. {paths[0]}): set {key_prefix}.img_dir to the folder their file_name is "
                            f"relative to")

    def _build_records(self, filter_empty: bool) -> FlatRecords:
        """The records of the images in id order, built for all annotations at once (a Python loop per
        box takes minutes at COCO's size)."""
        label_of = self.labels_by_category if self.labels_by_category is not None else self.category_map.label_of()
        image_ids = sorted(self.coco.imgs)
        infos = [self.coco.imgs[image_id] for image_id in image_ids]
        widths = np.array([float(info.get("width", 0)) for info in infos])
        heights = np.array([float(info.get("height", 0)) for info in infos])
        anns = AnnotationArrays.of(self.coco, image_ids, label_of)
        self.stats.unknown_image = len(self.coco.dataset.get("annotations", [])) - len(anns.owner)
        # A size of 0 is unknown: the boxes are then not clipped on that side.
        boxes, kept = sanitize_boxes(anns.xywh, np.where(widths != 0, widths, np.inf)[anns.owner],
                                     np.where(heights != 0, heights, np.inf)[anns.owner], self.stats)
        dropped = np.flatnonzero(~kept)
        if dropped.size:
            self.stats.dropped_example = self.coco.dataset["annotations"][int(anns.json_index[dropped[0]])].get("id")
        self.stats.unknown_category += int(np.count_nonzero(kept & (anns.label < 0)))
        kept &= anns.label >= 0
        is_object, is_crowd = kept & ~anns.crowd, kept & anns.crowd
        images = np.ones(len(image_ids), dtype=bool)
        if filter_empty and self.train:
            images = np.bincount(anns.owner[is_object], minlength=len(image_ids)) > 0
        is_object &= images[anns.owner]
        is_crowd &= images[anns.owner]
        position = np.cumsum(images) - 1  # of each image among those kept
        object_owner, crowd_owner = position[anns.owner[is_object]], position[anns.owner[is_crowd]]
        count = int(np.count_nonzero(images))
        return FlatRecords.from_columns(count, {
            "image_id": [image_id for image_id, keep in zip(image_ids, images) if keep],
            "file_name": [info["file_name"] for info, keep in zip(infos, images) if keep],
            "width": widths[images].tolist(),
            "height": heights[images].tolist(),
            "boxes": per_image(boxes[is_object], object_owner, count),
            "labels": per_image(anns.label[is_object], object_owner, count),
            "crowd_boxes": per_image(boxes[is_crowd], crowd_owner, count),
        })

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> np.ndarray:
        return self.records.column("width") / np.maximum(self.records.column("height"), 1.0)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        if not self.train:
            return self._test_sample(self.records[index], seed)
        skipped = []
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            image = self._read(record)
            if image is None:
                skipped.append(self.path_of(record))
                continue
            sample = self._make_sample(record, image, seed)
            sample["skipped"] = skipped
            return sample
        raise BadImageError(f"no image of {self.ann_file} in {self.img_dir} can be read")

    def _test_sample(self, record: dict, seed: int) -> dict:
        """A test image is never replaced by another one: its detections would be scored under the
        wrong image id. An unreadable one gives "image": None and is left out of the evaluation."""
        image = self._read(record)
        if image is None:
            return {"image_id": record["image_id"], "file_name": record["file_name"], "image": None,
                    "skipped": [self.path_of(record)]}
        sample = self._make_sample(record, image, seed)
        sample["skipped"] = []
        return sample

    def path_of(self, record: dict) -> str:
        return os.path.join(self.img_dir, record["file_name"])

    def _read(self, record: dict) -> np.ndarray | None:
        """The record's pixels, or None (after a warning when training) when the file cannot be read."""
        path = self.path_of(record)
        try:
            image = read_image(path, apply_exif_orientation=self.upright)
        except BadImageError as error:
            if self.on_bad_image == "fail":
                raise BadImageError(f"{error} (set data.on_bad_image=skip to continue without it)") from None
            if self.train:  # the evaluation names its skipped images in one warning at the end
                warnings.warn(f"skipping: {error}", stacklevel=3)
            return None
        return self._pixels_of_json_size(record, image, path)

    @staticmethod
    def _pixels_of_json_size(record: dict, image: np.ndarray, path: str) -> np.ndarray:
        """The json's width and height say which pixels the boxes refer to. Normally the stored ones
        (COCO's convention: the EXIF orientation is ignored). When only the upright image has the
        json's size, the file was annotated as a viewer shows it: the orientation is applied."""
        json_size = (record["width"], record["height"])
        stored_size = (image.shape[1], image.shape[0])
        if not record["width"] or stored_size == json_size or stored_size[::-1] != json_size:
            return image
        upright = read_image(path, apply_exif_orientation=True)
        return upright if (upright.shape[1], upright.shape[0]) == json_size else image

    def _within_file(self, record: dict, boxes: np.ndarray, labels: np.ndarray, crowd: np.ndarray, width: int,
                     height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The boxes clipped to the file's pixels, without those left with no area: a json without image
        sizes cannot have had its boxes checked when it was read."""
        limits = np.array([width, height, width, height], dtype=np.float32)
        boxes, crowd = boxes.clip(0, limits), crowd.clip(0, limits)
        keep_box = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        keep_crowd = (crowd[:, 2] - crowd[:, 0] > 0) & (crowd[:, 3] - crowd[:, 1] > 0)
        outside = int((~keep_box).sum() + (~keep_crowd).sum())
        if outside:
            warnings.warn(f"{self.path_of(record)}: {outside} box(es) of {self.ann_file} lie outside the "
                          f"{width}x{height} image and are left out (give each image's width and height in the "
                          f"json, or check the boxes' image)", stacklevel=3)
        return boxes[keep_box], labels[keep_box], crowd[keep_crowd]

    def _make_sample(self, record: dict, image: np.ndarray, seed: int) -> dict:
        height, width = image.shape[:2]
        boxes, labels, crowd = record["boxes"], record["labels"], record["crowd_boxes"]
        resized_on_disk = bool(record["width"]) and (record["width"], record["height"]) != (width, height)
        if resized_on_disk:
            sx, sy = width / record["width"], height / record["height"]
            if abs(sx / sy - 1) > 0.01:
                change = ("the boxes are stretched to the file's shape" if self.train else
                          "the detections are stretched back to the json's shape")
                warnings.warn(f"{self.path_of(record)}: the json gives {record['width']:g}x{record['height']:g} pixels "
                              f"but the file holds {width}x{height}; {change} "
                              f"(fix the width and height in {self.ann_file})", stacklevel=3)
            scale = np.array([sx, sy, sx, sy], dtype=np.float32)
            boxes, crowd = boxes * scale, crowd * scale
        sample = {"image_id": record["image_id"], "file_name": record["file_name"], "height": height, "width": width,
                  "seed": seed}
        if resized_on_disk and not self.train:
            # The ground truth is in the json's pixels: "height" and "width" are the size the model
            # scales its detections to, so they are the json's, not the file's.
            sample["height"], sample["width"] = int(round(record["height"])), int(round(record["width"]))
        if self.train:
            boxes, labels, crowd = self._within_file(record, boxes, labels, crowd, width, height)
            all_boxes = np.concatenate([boxes, crowd])
            image, new_boxes, kept = self.transform(image, all_boxes, seed)
            num = len(boxes)
            is_object = kept < num
            sample["boxes"] = torch.from_numpy(new_boxes[is_object])
            sample["labels"] = torch.from_numpy(labels[kept[is_object]])
            sample["crowd_boxes"] = torch.from_numpy(new_boxes[~is_object])
        elif self.transform is not None:
            image = self.transform(image)
        sample["image"] = to_chw_tensor(image)
        return sample


def index_seed(index: int, base: int = 0) -> int:
    return (base * 1_000_003 + index * 7919) % (2**31)


def split_unreadable(batch: list[dict]) -> tuple[list[dict], list[tuple[int, str]]]:
    """A batch of test samples -> (the samples with an image, (image id, path) of the unreadable ones)."""
    readable = [sample for sample in batch if sample["image"] is not None]
    unreadable = [(sample["image_id"], sample["skipped"][0]) for sample in batch if sample["image"] is None]
    return readable, unreadable
