"""PASCAL VOC datasets as VOCdevkit holds them, read as COCO-format dicts so that training, grouping,
on_bad_image and the evaluation see them as they see a json.

The layout (the official archives extracted into one folder, ROOT)::

    ROOT/VOC2007/ImageSets/Main/trainval.txt     one image id a line
    ROOT/VOC2007/Annotations/000005.xml          <size>, then <object> with <name>, <difficult>, <bndbox>
    ROOT/VOC2007/JPEGImages/000005.jpg

A split is ``YEAR_SET`` (``2007_trainval``: ROOT/VOC2007, ImageSets/Main/trainval.txt), and several
joined by ``+`` are read as one set: the paper's "07+12" is ``2007_trainval+2012_trainval`` and
"07++12" is ``2007_trainval+2007_test+2012_trainval``.

Coordinates: the XML gives 1-based pixel indices, xmax and ymax included. As the Faster R-CNN code
the paper follows (py-faster-rcnn, datasets/pascal_voc.py) does, 1 is subtracted from each of the four:
the box is [xmin - 1, ymin - 1, xmax - 1, ymax - 1] in 0-based indices, written to the COCO dict as
[xmin - 1, ymin - 1, xmax - xmin, ymax - ymin]. The VOC metric (detection/evaluation/voc_eval.py)
reads both ground truth and detections in that convention, with the devkit's +1 in widths.

Difficult objects: a training set leaves them out, as py-faster-rcnn does by default (its
``use_diff=False``), and with them the images that have no other object (py-faster-rcnn's filter_roidb
drops those: trained, their difficult objects would be background); a test set keeps them, marked ``difficult: 1`` (and ``iscrowd: 1``, so that the COCO
metric also ignores detections on them), for the VOC metric to ignore.

The XML files are parsed with the standard library's ElementTree, which expands no external entities;
the files are the user's own annotations, read from the local disk.
"""

from __future__ import annotations

import logging
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from pycocotools.coco import COCO

from resnet_engine.config import ConfigError

from .coco import AnnotationError, coco_from_dict
from .yolo import read_names

logger = logging.getLogger(__name__)

# The 20 classes in the devkit's order (VOCinit.m), the order of the class indices of VOC detectors.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
WITHHELD_TEST_YEARS = ("2008", "2009", "2010", "2011", "2012")
# Bad images named one by one in the warning of a set that skips some; the count covers the rest.
NAMED_PROBLEMS = 5


class VocAnnotationError(AnnotationError):
    """A VOC annotation file or image that cannot be used, named with the fix."""


@dataclass(frozen=True)
class VocSubset:
    """One part of a split: ROOT/VOC<year>/ImageSets/Main/<image_set>.txt."""

    year: str
    image_set: str

    @property
    def folder(self) -> str:
        return f"VOC{self.year}"

    @property
    def ground_truth_withheld(self) -> bool:
        """The test sets of VOC2008 to VOC2012 are scored by the evaluation server alone. Their annotation
        files, where the archive has them, hold only the person boxes of the action and layout tasks:
        read as detection ground truth, they would give a wrong score."""
        return self.image_set == "test" and self.year in WITHHELD_TEST_YEARS

    def __str__(self) -> str:
        return f"{self.year}_{self.image_set}"


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # 1-based xmin, ymin, xmax, ymax as in the file
    difficult: bool


@dataclass
class VocRecord:
    """One annotation file: the image size and its objects."""

    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


def parse_split(split: str, key: str) -> list[VocSubset]:
    """``2007_trainval+2012_trainval`` -> its subsets, with one line naming a malformed part."""
    subsets = []
    for part in str(split).split("+"):
        year, _, image_set = part.strip().partition("_")
        if not year or not image_set:
            raise ConfigError(f"{key}={split!r}: give YEAR_SET parts joined by '+', such as "
                              "2007_trainval+2012_trainval (ROOT/VOC2007/ImageSets/Main/trainval.txt)")
        subsets.append(VocSubset(year, image_set))
    return subsets


def read_image_ids(root: str, subset: VocSubset, key: str) -> list[str]:
    """The image ids listed in the subset's ImageSets/Main file (the first field of each line)."""
    path = os.path.join(root, subset.folder, "ImageSets", "Main", f"{subset.image_set}.txt")
    if not os.path.isfile(path):
        raise ConfigError(f"VOC image list not found: {path} (set {key}.root to the VOCdevkit folder that holds "
                          f"{subset.folder}/, and {key}.split to parts such as 2007_trainval)")
    with open(path, encoding="utf-8") as handle:
        ids = [line.split()[0] for line in handle if line.strip()]
    if not ids:
        raise ConfigError(f"{path} lists no image: give one image id a line")
    return ids


def read_class_names(names_file: str, key: str) -> list[str]:
    """The class list: the 20 VOC classes, or one name a line of ``names_file`` (or a data.yaml's names)."""
    if not names_file:
        return list(VOC_CLASSES)
    if not os.path.isfile(names_file):
        raise ConfigError(f"VOC class names file not found: {names_file} (set {key}.names to a file of one class "
                          "name a line, or to '' for the 20 VOC classes)")
    return read_names(names_file)  # the same names files as YOLO sets


def element_text(parent: ET.Element, tag: str, where: str) -> str:
    node = parent.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise ValueError(f"{where} has no <{tag}>")
    return node.text.strip()


def element_number(parent: ET.Element, tag: str, where: str) -> float:
    text = element_text(parent, tag, where)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where} has <{tag}>{text}</{tag}>, not a number") from None


def parse_object(node: ET.Element, index: int, width: int, height: int, class_of: dict[str, str],
                 first_pixel: int = 1) -> VocObject:
    """One <object>, checked: a known class, four coordinates from ``first_pixel`` (VOC's 1, ImageNet's 0)
    to the width and height, xmin <= xmax, ymin <= ymax."""
    where = f"object #{index + 1}"
    name = element_text(node, "name", where)
    if name.lower() not in class_of:
        raise ValueError(f"{where} is of class '{name}', which is not in the class list (add it to the names "
                         "file, or correct the name)")
    bndbox = node.find("bndbox")
    if bndbox is None:
        raise ValueError(f"{where} ({name}) has no <bndbox>")
    xmin, ymin, xmax, ymax = (element_number(bndbox, tag, f"{where} ({name})") for tag in BOX_FIELDS)
    if xmax < xmin or ymax < ymin:
        raise ValueError(f"{where} ({name}) has xmin {xmin:g} xmax {xmax:g} ymin {ymin:g} ymax {ymax:g}: give "
                         "xmin <= xmax and ymin <= ymax")
    if min(xmin, ymin) < first_pixel or xmax > width or ymax > height:
        raise ValueError(f"{where} ({name}) box {xmin:g},{ymin:g},{xmax:g},{ymax:g} is outside the {width}x{height} "
                         f"image (coordinates run from {first_pixel} to the width and height): correct the box or "
                         "<size>")
    difficult = node.find("difficult")  # absent from some files: not difficult
    is_difficult = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
    return VocObject(class_of[name.lower()], (xmin, ymin, xmax, ymax), is_difficult)


def parse_annotation(path: str, class_names: list[str], first_pixel: int = 1) -> VocRecord:
    """The size and objects of one annotation file; VocAnnotationError naming the file and what to fix.
    ``first_pixel``: the coordinate of the first pixel column, 1 in VOC files, 0 in ImageNet's."""
    class_of = {name.lower(): name for name in class_names}
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        if size is None:
            raise ValueError("has no <size>")
        width, height = (int(element_number(size, tag, "<size>")) for tag in ("width", "height"))
        if width <= 0 or height <= 0:
            raise ValueError(f"gives the size {width}x{height}: give the image's width and height in pixels")
        objects = [parse_object(node, index, width, height, class_of, first_pixel)
                   for index, node in enumerate(root.findall("object"))]
    except ET.ParseError as error:
        raise VocAnnotationError(f"{path}: not valid XML ({error}): restore the file from the dataset") from None
    except ValueError as error:
        raise VocAnnotationError(f"{path}: {error}") from None
    return VocRecord(width, height, objects)


def coco_box(box: tuple[float, float, float, float]) -> list[float]:
    """1-based inclusive VOC corners -> COCO [x, y, w, h] of the 0-based box (py-faster-rcnn's minus 1)."""
    xmin, ymin, xmax, ymax = box
    return [xmin - 1, ymin - 1, xmax - xmin, ymax - ymin]


@dataclass
class SkippedImages:
    """The images of a set left out for a bad annotation or a missing file, with the reason of each."""

    problems: list[str] = field(default_factory=list)
    dataset_kind: str = "VOC"  # what the warning calls the set

    def add(self, problem: str, on_bad_image: str) -> None:
        if on_bad_image == "fail":
            raise VocAnnotationError(f"{problem} (set data.on_bad_image=skip to leave the image out)")
        self.problems.append(problem)

    def warn(self, split: str, total: int) -> None:
        if not self.problems:
            return
        named = "; ".join(self.problems[:NAMED_PROBLEMS]) + ("; ..." if len(self.problems) > NAMED_PROBLEMS else "")
        warnings.warn(f"{self.dataset_kind} {split}: {len(self.problems)} of {total} images skipped: {named}", stacklevel=3)


def voc_to_coco(root: str, split: str, class_names: list[str], train: bool, on_bad_image: str = "skip",
                key: str = "data.train") -> dict:
    """A VOC split as a COCO-format dict: images numbered from 1 in list order, ``file_name`` relative to
    ``root`` (VOC2007/JPEGImages/000005.jpg), ``voc_id``, ``voc_year`` and ``voc_set`` the image's id,
    year and list, one category per class (id = index + 1). Training leaves difficult objects out; a test set keeps them marked.

    An image whose annotation is bad or whose file is missing is left out and named in one warning
    (``on_bad_image="skip"``), or stops the reading (``"fail"``). A test subset without any annotation
    file, or whose ground truth the server keeps (VOC2012 test), gives its images without objects, and a
    test split made only of such subsets has no 'annotations' list, as COCO's test-dev image lists.
    """
    images, annotations, skipped, annotated, all_difficult = [], [], SkippedImages(), False, 0
    for subset in parse_split(split, f"{key}.split"):
        if train and subset.ground_truth_withheld:
            raise ConfigError(f"{key}.split names {subset}, whose ground truth only the VOC evaluation server has: "
                              "train on trainval sets (07++12 is 2007_trainval+2007_test+2012_trainval)")
        ids = read_image_ids(root, subset, key)
        xml_dir = os.path.join(root, subset.folder, "Annotations")
        unannotated = not train and (subset.ground_truth_withheld or
                                     not any(os.path.isfile(os.path.join(xml_dir, f"{i}.xml")) for i in ids))
        annotated = annotated or not unannotated
        for voc_id in ids:
            record = read_record(root, subset, voc_id, class_names, unannotated, skipped, on_bad_image)
            if record is None:
                continue
            image_id = len(images) + 1
            entries = annotation_entries(record, image_id, class_names, train, len(annotations) + 1)
            if train and record.objects and not entries:
                all_difficult += 1  # its difficult objects would be trained as background
                continue
            images.append({"id": image_id, "file_name": f"{subset.folder}/JPEGImages/{voc_id}.jpg", "voc_id": voc_id,
                           "voc_year": subset.year, "voc_set": subset.image_set,
                           "width": record.width, "height": record.height})
            annotations += entries
    skipped.warn(split, len(images) + len(skipped.problems))
    if all_difficult:
        logger.info("VOC %s: %d image(s) whose objects are all difficult are left out of training (as py-faster-rcnn "
                    "leaves them out)", split, all_difficult)
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(class_names)]
    data = {"images": images, "categories": categories}
    if annotated:  # without an 'annotations' list, the evaluation writes the detections instead of scoring them
        data["annotations"] = annotations
    return data


def read_record(root: str, subset: VocSubset, voc_id: str, class_names: list[str], unannotated: bool,
                skipped: SkippedImages, on_bad_image: str) -> VocRecord | None:
    """The record of one listed image; None, after counting it, for an image to leave out."""
    image_path = os.path.join(root, subset.folder, "JPEGImages", f"{voc_id}.jpg")
    xml_path = os.path.join(root, subset.folder, "Annotations", f"{voc_id}.xml")
    if not os.path.isfile(image_path):
        skipped.add(f"{image_path}: image not found (listed in {subset.folder}/ImageSets/Main/{subset.image_set}.txt; "
                    "restore it or remove its line)", on_bad_image)
        return None
    if unannotated:
        return VocRecord(0, 0)  # the size is read with the image
    if not os.path.isfile(xml_path):
        skipped.add(f"{xml_path}: annotation not found (restore it, or remove the image's line from "
                    f"ImageSets/Main/{subset.image_set}.txt)", on_bad_image)
        return None
    try:
        return parse_annotation(xml_path, class_names)
    except VocAnnotationError as error:
        skipped.add(str(error), on_bad_image)
        return None


def annotation_entries(record: VocRecord, image_id: int, class_names: list[str], train: bool,
                       first_id: int) -> list[dict]:
    category_of = {name: index + 1 for index, name in enumerate(class_names)}
    entries = []
    for obj in record.objects:
        if obj.difficult and train:
            continue
        x, y, w, h = coco_box(obj.box)
        entries.append({"id": first_id + len(entries), "image_id": image_id, "category_id": category_of[obj.name],
                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(obj.difficult),
                        "difficult": int(obj.difficult)})
    return entries


def read_voc_split(root: str, split: str, names_file: str, train: bool, on_bad_image: str, key: str) -> COCO:
    """The COCO object of a VOC split (its images' file_name relative to ``root``)."""
    if not os.path.isdir(root):
        raise ConfigError(f"VOC folder not found: {root} (set {key}.root to the VOCdevkit folder that holds "
                          "VOC2007/ and VOC2012/)")
    data = voc_to_coco(root, split, read_class_names(names_file, key), train, on_bad_image, key)
    if not data["images"]:
        raise VocAnnotationError(f"VOC {split} in {root}: no usable image (see the warning above)")
    return coco_from_dict(data, f"{root} ({split})")


def write_voc_annotation(path: str, file_name: str, width: int, height: int, objects: list[dict]) -> None:
    """An annotation file as the devkit writes them; ``objects``: {"name", "box" (1-based corners), "difficult"}."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "filename").text = file_name
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for obj in objects:
        node = ET.SubElement(annotation, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "difficult").text = str(int(obj["difficult"]))
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(BOX_FIELDS, obj["box"]):
            ET.SubElement(bndbox, tag).text = str(int(value))
    ET.ElementTree(annotation).write(path, encoding="utf-8")


def voc_box_of(x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
    """A continuous [x, y, w, h] box -> the 1-based pixel indices of its first and last pixels."""
    return round(x) + 1, round(y) + 1, max(round(x) + 1, round(x + w)), max(round(y) + 1, round(y + h))
