"""YOLO-format datasets, read as COCO-format dicts so that training and the COCO evaluation see them as
they see a json.

The layout (as ultralytics and darknet write it)::

    ROOT/images/SPLIT/**/NAME.jpg      ROOT/labels/SPLIT/**/NAME.txt      ROOT/data.yaml (or classes.txt)

Each line of a label file is ``class x_center y_center width height``: the class index into the names
(from 0), the box normalized by the width and height of the image as a viewer shows it (EXIF orientation
applied). An image without a label file has no objects. Class index i becomes category id i + 1.
"""

from __future__ import annotations

import os
import warnings

import yaml
from PIL import Image
from pycocotools.coco import COCO

from resnet_engine.config import ConfigError, load_yaml_text

from .coco import AnnotationError, coco_from_dict
from .image_io import IMAGE_SUFFIXES, BadImageError, exif_orientation, read_image

# The names files looked for in ROOT when none is given, in this order.
NAMES_FILES = ("data.yaml", "classes.txt", "obj.names")
# Normalized coordinates may stray this far outside [0, 1] (rounding of label tools); boxes are clipped.
COORDINATE_TOLERANCE = 0.01
FIELDS = ("x_center", "y_center", "width", "height")


class LabelLineError(AnnotationError):
    """A malformed line of a YOLO label file."""


def find_names_file(root: str, names: str, key_prefix: str) -> str:
    """The class names file: ``names`` when given, else the first of NAMES_FILES in ``root``."""
    if names:
        if not os.path.isfile(names):
            raise ConfigError(f"YOLO names file not found: {names} (set {key_prefix}.names=/path/to/classes.txt: "
                              "a data.yaml with names, or one class name a line)")
        return names
    for candidate in NAMES_FILES:
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"no class names in {root}: none of {', '.join(NAMES_FILES)} is there (set "
                      f"{key_prefix}.names=/path/to/classes.txt)")


def read_names(path: str) -> list[str]:
    """Class names in index order: a YAML file's ``names`` (a list, or {index: name} as ultralytics writes
    it), or one name a line. A name given twice is an error: annotations and metric tables name classes."""
    names = names_of_yaml(path) if path.endswith((".yaml", ".yml")) else names_of_lines(path)
    first_index = {}
    for index, name in enumerate(names):
        first = first_index.setdefault(name, index)
        if first != index:
            raise ConfigError(f"{path}: class {index} is named '{name}', as class {first} is: give each class a name "
                              "of its own")
    return names


def names_of_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        # A blank line would shift the index of every class below it.
        raise ConfigError(f"{path}: line {lines.index('') + 1} is empty: give one class name a line, in the "
                          "order of the class indices")
    if not lines:
        raise ConfigError(f"{path}: no class names: give one class name a line")
    return lines


def names_of_yaml(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml_text(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML ({getattr(error, 'problem', None) or error})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        by_index = {int(key) if str(key).isdigit() else key: name for key, name in names.items()}
        if sorted(by_index, key=str) == sorted(range(len(by_index)), key=str):
            names = [by_index[index] for index in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{path}: no 'names' list: give the class names as names: [cat, dog] or as "
                          "names: {0: cat, 1: dog} (indices from 0, without gaps)")
    if isinstance(data.get("nc"), int) and data["nc"] != len(names):
        raise ConfigError(f"{path}: nc is {data['nc']} but 'names' has {len(names)} entries: give one name per class")
    return [str(name) for name in names]


def yolo_folders(root: str, split: str, key_prefix: str) -> tuple[str, str]:
    """ROOT/images[/SPLIT] and ROOT/labels[/SPLIT]."""
    images_dir = os.path.join(root, "images", split) if split else os.path.join(root, "images")
    labels_dir = os.path.join(root, "labels", split) if split else os.path.join(root, "labels")
    for kind, folder in (("images", images_dir), ("labels", labels_dir)):
        if not os.path.isdir(folder):
            raise ConfigError(f"YOLO {kind} folder not found: {folder} (set {key_prefix}.root to the folder that "
                              f"holds images/ and labels/, and {key_prefix}.split to their subfolder, such as train)")
    return images_dir, labels_dir


def files_below(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Paths relative to ``folder`` of its files with these suffixes, subfolders included, sorted."""
    found = []
    for parent, _, names in os.walk(folder):
        found.extend(os.path.relpath(os.path.join(parent, name), folder) for name in names
                     if name.lower().endswith(suffixes))
    return sorted(found)


def parse_label_line(line: str, num_classes: int) -> tuple[int, list[float]]:
    """(class index, [x_center, y_center, width, height]) of one line; ValueError saying what is wrong."""
    tokens = line.split()
    if len(tokens) != 5:
        raise ValueError(f"has {len(tokens)} fields: give 'class x_center y_center width height'")
    try:
        values = [float(token) for token in tokens]
    except ValueError:
        bad = next(token for token in tokens if not is_float(token))
        raise ValueError(f"'{bad}' is not a number") from None
    if not values[0].is_integer():
        raise ValueError(f"class '{tokens[0]}' is not an integer index")
    index = int(values[0])
    if not 0 <= index < num_classes:
        raise ValueError(f"class {index} is not one of the {num_classes} class names (0 to {num_classes - 1})")
    for name, value in zip(FIELDS, values[1:]):
        if not -COORDINATE_TOLERANCE <= value <= 1 + COORDINATE_TOLERANCE:
            raise ValueError(f"{name} {value:g} is outside [0, 1]: give coordinates divided by the image's width "
                             "and height")
    return index, values[1:]


def is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_label_file(path: str, num_classes: int) -> list[tuple[int, list[float]]]:
    """The objects of one label file; LabelLineError naming ``path:LINE`` at the first malformed line."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    objects = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            objects.append(parse_label_line(line, num_classes))
        except ValueError as error:
            raise LabelLineError(f"{path}:{number}: {error}") from None
    return objects


def upright_size(path: str) -> tuple[int, int] | None:
    """(width, height) of the image as a viewer shows it, from the file's header where PIL can read it;
    None when the file cannot be decoded."""
    try:
        with Image.open(path) as image:
            width, height = image.size
        orientation = exif_orientation(path)  # the turn OpenCV applies when reading it upright
    except (OSError, SyntaxError, ValueError):  # formats PIL lacks, or a damaged header: OpenCV may still read it
        try:
            pixels = read_image(path, apply_exif_orientation=True)
        except BadImageError:
            return None
        return pixels.shape[1], pixels.shape[0]
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def coco_annotations(objects: list[tuple[int, list[float]]], image_id: int, width: int, height: int,
                     first_id: int) -> list[dict]:
    """COCO annotations ([x, y, width, height] in pixels, category id = class index + 1) of one image."""
    annotations = []
    for offset, (index, (x_center, y_center, box_width, box_height)) in enumerate(objects):
        w, h = box_width * width, box_height * height
        annotations.append({"id": first_id + offset, "image_id": image_id, "category_id": index + 1,
                            "bbox": [x_center * width - w / 2, y_center * height - h / 2, w, h], "area": w * h,
                            "iscrowd": 0})
    return annotations


def yolo_to_coco(root: str, split: str, names: list[str], on_bad_image: str = "skip",
                 key_prefix: str = "data.train") -> dict:
    """A YOLO split as a COCO-format dict: images numbered from 1 in the order of their sorted paths,
    ``file_name`` relative to the split's images folder, one category per name.

    An image that cannot be decoded, or whose label file has a malformed line, is left out with one
    warning naming it (``on_bad_image="skip"``), or stops the reading (``"fail"``). A label file
    without an image is named in a warning and ignored.
    """
    images_dir, labels_dir = yolo_folders(root, split, key_prefix)
    image_files = files_below(images_dir, IMAGE_SUFFIXES)
    images, annotations = [], []
    for file_name in image_files:
        label_path = os.path.join(labels_dir, os.path.splitext(file_name)[0] + ".txt")
        entry = image_entry(os.path.join(images_dir, file_name), label_path, len(names), on_bad_image)
        if entry is None:
            continue
        size, objects = entry
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
        annotations += coco_annotations(objects, image_id, *size, first_id=len(annotations) + 1)
    warn_about_labels_without_images(labels_dir, images_dir, image_files)
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def image_entry(image_path: str, label_path: str, num_classes: int,
                on_bad_image: str) -> tuple[tuple[int, int], list] | None:
    """(the image's upright size, its objects); None, after a warning, for an image to leave out."""
    try:
        objects = read_label_file(label_path, num_classes) if os.path.isfile(label_path) else []
        size = upright_size(image_path)
        if size is None:
            raise BadImageError(f"cannot decode image: {image_path}")
    except (LabelLineError, BadImageError) as error:
        if on_bad_image == "fail":
            raise type(error)(f"{error} (set data.on_bad_image=skip to leave the image out)") from None
        warnings.warn(f"skipping {image_path}: {error}", stacklevel=3)
        return None
    return size, objects


def warn_about_labels_without_images(labels_dir: str, images_dir: str, image_files: list[str]) -> None:
    stems = {os.path.splitext(name)[0] for name in image_files}
    orphans = [name for name in files_below(labels_dir, (".txt",))
               if os.path.splitext(name)[0] not in stems and os.path.basename(name) not in NAMES_FILES]
    if orphans:
        shown = ", ".join(orphans[:5]) + (", ..." if len(orphans) > 5 else "")
        warnings.warn(f"{labels_dir}: {len(orphans)} label files have no image in {images_dir} and are ignored: "
                      f"{shown}", stacklevel=3)


def read_yolo_split(root: str, split: str, names_file: str, on_bad_image: str,
                    key_prefix: str) -> tuple[COCO, str, str]:
    """The COCO object of a YOLO split, its images folder and its labels folder."""
    images_dir, labels_dir = yolo_folders(root, split, key_prefix)
    names = read_names(find_names_file(root, names_file, key_prefix))
    data = yolo_to_coco(root, split, names, on_bad_image, key_prefix)
    return coco_from_dict(data, labels_dir), images_dir, labels_dir
