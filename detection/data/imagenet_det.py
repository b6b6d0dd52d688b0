"""ImageNet DET (the ILSVRC detection task, 200 classes) as the ILSVRC2015 devkit lays it out, read as
COCO-format dicts as detection/data/voc.py reads VOC.

The layout (ROOT is the folder that holds Data/, Annotations/ and ImageSets/; ILSVRC/ in the 2015
archive)::

    ROOT/Data/DET/train/<path>.JPEG               <path>: ILSVRC2013_train/n02672831/n02672831_11478, ...
    ROOT/Annotations/DET/train/<path>.xml         PASCAL-style XML, <name> a synset id (wnid)
    ROOT/Data/DET/val/ILSVRC2012_val_00000001.JPEG and ROOT/Annotations/DET/val/...xml
    ROOT/ImageSets/DET/train_<k>.txt              per class k: "<path> 1" (has the class) or "<path> -1"
    ROOT/ImageSets/DET/val.txt, test.txt          "<name> <index>"
    ROOT/ImageSets/DET/val1.txt, val2.txt         R-CNN's halves of val (not part of the devkit)

A split is list names joined by ``+``: ``train`` (every train_<k>.txt), ``train_<k>``, ``val``, ``val1``,
``val2``, ``test``, or any other ImageSets/DET/<name>.txt. Lists whose name starts with ``train`` hold
images of Data/DET/train, ``test`` of Data/DET/test, the others of Data/DET/val. The paper's Table 12
trains on ``train+val1`` and tests on ``val2``. An image listed twice (in several train_<k>.txt, or in
two lists of a split) is read once.

Negative images: the lines of train_<k>.txt marked -1 name images without an object of class k, and an
image that no list marks 1 has no object of any class (the devkit's negative training images). They are
kept as images without objects, so that the detector sees them as background only (as any image without
objects in a COCO set); ``data.filter_empty=true`` leaves them out. Without an annotation file, such an
image's size is read from its header.

Classes: ``names`` is the devkit's synset list as text (``wnid index name`` per line, the ILSVRC2015
devkit's data/map_det.txt), ordered by index; the category names are the wnids. Empty: the wnids seen in the annotations, sorted,
with a warning (a set may lack some of the 200 classes, which would shift the labels).

Coordinates: ImageNet files hold 0-based pixel indices, xmax and ymax included (the devkit's +1 in
widths). They are written unchanged as [xmin, ymin, xmax - xmin, ymax - ymin], the convention of the
DET metric (detection/evaluation/det_eval.py). Boxes from 0 up to the width and height are accepted
(some ILSVRC files give xmax = width).
"""

from __future__ import annotations

import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from PIL import Image
from pycocotools.coco import COCO

from resnet_engine.config import ConfigError

from .coco import coco_from_dict
from .voc import SkippedImages, VocAnnotationError, VocRecord, parse_annotation

FIRST_PIXEL = 0  # ImageNet boxes are 0-based
TRAIN_LIST = re.compile(r"train_(\d+)\.txt$")


def list_folder(root: str) -> str:
    return os.path.join(root, "ImageSets", "DET")


def image_folder(list_name: str) -> str:
    """The Data/DET and Annotations/DET subfolder of a list's images."""
    for prefix in ("train", "test"):
        if list_name.startswith(prefix):
            return prefix
    return "val"


def list_files(root: str, part: str, key: str) -> list[str]:
    """The list files of one part of a split: every train_<k>.txt in k's order for ``train``."""
    folder = list_folder(root)
    if part == "train" and not os.path.isfile(os.path.join(folder, "train.txt")):
        names = [name for name in os.listdir(folder) if TRAIN_LIST.match(name)] if os.path.isdir(folder) else []
        if names:
            return [os.path.join(folder, name) for name in sorted(names, key=lambda n: int(TRAIN_LIST.match(n)[1]))]
    path = os.path.join(folder, f"{part}.txt")
    if not os.path.isfile(path):
        raise ConfigError(f"ImageNet DET image list not found: {path} (set {key}.root to the folder that holds "
                          f"ImageSets/DET/, and {key}.split to lists such as train+val1; val1.txt and val2.txt are "
                          "R-CNN's split of val, to be put there)")
    return [path]


@dataclass
class ListedImage:
    """An image of the split's lists: its Data/DET subfolder and path there, whether a list marks it as
    holding a class (train_<k>.txt's 1; every other list's lines do), and the devkit's image index
    (the second field of val.txt and test.txt lines, which the evaluation server's results name)."""

    folder: str
    name: str
    positive: bool = False
    index: int | None = None


def read_list(path: str, folder: str, listed: dict[tuple[str, str], ListedImage]) -> int:
    """Add the images of one list to ``listed`` (by folder and path, in order of first appearance): a
    train_<k>.txt line's -1 marks a negative image, any other line a positive one. Returns the number
    of images the list names."""
    train_list = TRAIN_LIST.search(os.path.basename(path)) is not None
    count = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if not fields:
                continue
            count += 1
            image = listed.setdefault((folder, fields[0]), ListedImage(folder, fields[0]))
            second = fields[1] if len(fields) > 1 else ""
            image.positive = image.positive or not (train_list and second == "-1")
            if not train_list and second.isdigit():
                image.index = int(second)
    return count


def read_split(root: str, split: str, key: str) -> list[ListedImage]:
    """The images of the split's lists, in order of first appearance; an image in several of them
    (train_1+train_2 share most of theirs) once."""
    listed: dict[tuple[str, str], ListedImage] = {}
    for part in str(split).split("+"):
        part = part.strip()
        if not part or "/" in part or part.endswith(".txt"):
            raise ConfigError(f"{key}.split={split!r}: give list names of ImageSets/DET joined by '+', such as "
                              "train+val1 (every train_<k>.txt, then val1.txt)")
        named = sum(read_list(path, image_folder(part), listed) for path in list_files(root, part, key))
        if not named:
            raise ConfigError(f"ImageSets/DET lists of '{part}' in {root} name no image: give one image a line")
    return list(listed.values())


def read_synset_list(path: str, key: str) -> list[str]:
    """The wnids of a map_det.txt (``wnid index name`` per line), ordered by index."""
    if not os.path.isfile(path):
        raise ConfigError(f"ImageNet DET synset list not found: {path} (set {key}.names to the devkit's "
                          "map_det.txt, or to '' to take the synsets of the annotations)")
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[1].isdigit():
                raise ConfigError(f"{path} line {number}: '{line.strip()}' is not 'wnid index name' (map_det.txt's "
                                  "lines, such as 'n02672831 1 accordion')")
            entries.append((int(fields[1]), fields[0]))
    wnids = [wnid for _, wnid in sorted(entries)]
    # The category ids are the positions + 1: with indices 1..N they are the devkit's DET ids, which the
    # results file for the evaluation server names.
    if len(set(wnids)) != len(wnids) or sorted(index for index, _ in entries) != list(range(1, len(entries) + 1)):
        raise ConfigError(f"{path}: give each synset once, one 'wnid index name' a line, the indices 1 to the "
                          "number of synsets")
    return wnids


def annotation_path(root: str, folder: str, name: str) -> str:
    return os.path.join(root, "Annotations", "DET", folder, f"{name}.xml")


def synsets_of_annotations(root: str, images: list[ListedImage]) -> list[str]:
    """The wnids named in the split's annotation files, sorted; files that cannot be parsed are left to
    the reading that follows, which names them."""
    wnids = set()
    for image in images:
        try:
            tree = ET.parse(annotation_path(root, image.folder, image.name))
        except (OSError, ET.ParseError):
            continue
        wnids.update(node.text.strip() for node in tree.iter("name") if node.text and node.text.strip())
    return sorted(wnids)


def class_list(root: str, names_file: str, images: list[ListedImage], key: str) -> list[str]:
    if names_file:
        return read_synset_list(names_file, key)
    wnids = synsets_of_annotations(root, images)
    warnings.warn(f"{key}.names is empty: the {len(wnids)} synsets of the annotations, sorted, are the classes; "
                  f"give {key}.names=map_det.txt so that the labels do not depend on which classes a set holds "
                  "(and det_results.txt, the file for the evaluation server, can name map_det.txt's class ids)",
                  stacklevel=3)
    return wnids


def header_size(image_path: str) -> tuple[int, int]:
    """(width, height) from the image file's header, for the grouping by aspect ratio; (0, 0) when the
    header cannot be read, which leaves the size to the reading of the image (and a broken image to its
    skip-and-count)."""
    try:
        with Image.open(image_path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return 0, 0


def read_record(root: str, image: ListedImage, unannotated: bool, class_names: list[str], skipped: SkippedImages,
                on_bad_image: str) -> VocRecord | None:
    """The record of one listed image; None, after counting it, for an image to leave out."""
    image_path = os.path.join(root, "Data", "DET", image.folder, f"{image.name}.JPEG")
    xml_path = annotation_path(root, image.folder, image.name)
    if not os.path.isfile(image_path):
        skipped.add(f"{image_path}: image not found (listed in ImageSets/DET; restore it or remove its line)",
                    on_bad_image)
        return None
    if unannotated or (not image.positive and not os.path.isfile(xml_path)):
        return VocRecord(*header_size(image_path))  # a test image, or a negative one without a file
    if not os.path.isfile(xml_path):
        skipped.add(f"{xml_path}: annotation not found (restore it, or remove the image's line from "
                    "ImageSets/DET)", on_bad_image)
        return None
    try:
        return parse_annotation(xml_path, class_names, FIRST_PIXEL)
    except VocAnnotationError as error:
        skipped.add(str(error), on_bad_image)
        return None


def object_entries(record: VocRecord, image_id: int, class_names: list[str], first_id: int) -> list[dict]:
    """COCO entries of the objects, boxes as the file gives them; DET has no difficult objects."""
    category_of = {name: index + 1 for index, name in enumerate(class_names)}
    entries = []
    for obj in record.objects:
        xmin, ymin, xmax, ymax = obj.box
        entries.append({"id": first_id + len(entries), "image_id": image_id, "category_id": category_of[obj.name],
                        "bbox": [xmin, ymin, xmax - xmin, ymax - ymin], "area": (xmax - xmin) * (ymax - ymin),
                        "iscrowd": 0})
    return entries


def imagenet_det_to_coco(root: str, split: str, names_file: str, train: bool, on_bad_image: str = "skip",
                         key: str = "data.train") -> dict:
    """An ImageNet DET split as a COCO-format dict: images numbered from 1 in list order, ``file_name``
    relative to ``root`` (Data/DET/val/ILSVRC2012_val_00000001.JPEG), ``det_id`` the path in the list and,
    for the images of val and test lists, ``det_index`` the devkit's image index; one category per synset
    (id = index + 1, name = wnid; ``det_id`` the same id when ``names_file`` gives the devkit's numbering).
    A bad annotation or a missing file leaves the image out, named in one
    warning (``on_bad_image="skip"``), or stops the reading (``"fail"``). A test split (no annotation file
    in any of its lists) has no 'annotations' list."""
    listed = read_split(root, split, key)
    if train and any(image.folder == "test" for image in listed):
        raise ConfigError(f"{key}.split={split!r} names the test list, whose ground truth only the evaluation "
                          "server has: train on train and val1")
    class_names = class_list(root, names_file, listed, key)
    unannotated = not train and not any(os.path.isfile(annotation_path(root, image.folder, image.name))
                                        for image in listed)
    images, annotations, skipped = [], [], SkippedImages(dataset_kind="ImageNet DET")
    for image in listed:
        record = read_record(root, image, unannotated, class_names, skipped, on_bad_image)
        if record is None:
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": f"Data/DET/{image.folder}/{image.name}.JPEG",
                       "det_id": image.name, "width": record.width, "height": record.height})
        if image.index is not None:
            images[-1]["det_index"] = image.index
        annotations += object_entries(record, image_id, class_names, len(annotations) + 1)
    skipped.warn(split, len(images) + len(skipped.problems))
    data = {"images": images, "categories": [{"id": i + 1, "name": wnid} for i, wnid in enumerate(class_names)]}
    if names_file:  # the category ids are map_det.txt's: the results file for the server may name them
        for category in data["categories"]:
            category["det_id"] = category["id"]
    if not unannotated:
        data["annotations"] = annotations
    return data


def read_imagenet_det_split(root: str, split: str, names_file: str, train: bool, on_bad_image: str,
                            key: str) -> COCO:
    """The COCO object of an ImageNet DET split (its images' file_name relative to ``root``)."""
    if not os.path.isdir(root):
        raise ConfigError(f"ImageNet DET folder not found: {root} (set {key}.root to the folder that holds Data/, "
                          "Annotations/ and ImageSets/)")
    data = imagenet_det_to_coco(root, split, names_file, train, on_bad_image, key)
    if not data["images"]:
        raise VocAnnotationError(f"ImageNet DET {split} in {root}: no usable image (see the warning above)")
    return coco_from_dict(data, f"{root} ({split})")
