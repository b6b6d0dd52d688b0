"""The embedded default dataset: synthetic shapes in COCO format, generated on first use.

Each image has a textured background with clutter (lines and blobs that are not objects) and
0-8 objects of five classes in random colours, at sizes from small (under 32x32) to large, some
partly overlapping. The generator is deterministic: the same seed gives the same files.

    python tools/make_shapes.py            # writes datasets/shapes/

The same images also come as a VOCdevkit folder (ensure_shapes_voc, datasets/shapes_voc/), for the VOC
reader and metric, and in the ILSVRC DET layout (ensure_shapes_det, datasets/shapes_det/), for the
ImageNet DET reader and metric.
"""

from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np

from .voc import voc_box_of, write_voc_annotation

CLASSES = ("circle", "square", "triangle", "star", "cross")
DEFAULT_ROOT = "datasets/shapes"
SPLITS = {"train": 1500, "val": 300}
# The VOC copy: VOC_ROOT/VOCshapes/{Annotations,ImageSets/Main,JPEGImages}, splits shapes_train and
# shapes_val, the class names in VOC_ROOT/classes.txt.
VOC_ROOT = "datasets/shapes_voc"
VOC_YEAR = "shapes"
# The DET copy: DET_ROOT/{Data,Annotations}/DET/{train,val}, ImageSets/DET/train_<k>.txt per class and
# val.txt, val1.txt, val2.txt (the val split halved, as R-CNN halves ImageNet's), the classes as made-up
# wnids in DET_ROOT/map_det.txt.
DET_ROOT = "datasets/shapes_det"
DET_WNIDS = tuple(f"n{index + 1:08d}" for index in range(len(CLASSES)))
# Objects whose box is narrower or lower than this (pixels) are marked difficult in the VOC copy, as
# VOC marks objects hard to recognize: training leaves them out and the VOC metric ignores them.
DIFFICULT_BELOW = 16


def polygon_points(kind: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    r = size / 2
    if kind == "square":
        points = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif kind == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "star":
        points = [((r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                   (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    elif kind == "cross":
        t = r / 3
        points = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t),
                  (-r, -t), (-t, -t)]
    else:
        raise ValueError(kind)
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points], dtype=np.float64)


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top, bottom = rng.integers(40, 216, size=(2, 3))
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = (top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp).repeat(width, axis=1)
    image = image + rng.normal(0, 10, size=(height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 8)):  # clutter: thin lines and small soft blobs
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            p1 = tuple(int(v) for v in (rng.integers(0, width), rng.integers(0, height)))
            p2 = tuple(int(v) for v in (rng.integers(0, width), rng.integers(0, height)))
            cv2.line(image, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One image and its objects: [{"category": index, "bbox": [x, y, w, h]}]."""
    landscape = rng.random() < 0.7
    long_side, short_side = int(rng.integers(288, 353)), int(rng.integers(208, 257))
    height, width = (short_side, long_side) if landscape else (long_side, short_side)
    image = render_background(rng, height, width)
    num_objects = 0 if rng.random() < 0.08 else int(rng.integers(1, 9))
    objects: list[dict] = []
    boxes: list[tuple] = []
    for _ in range(num_objects * 4):
        if len(objects) == num_objects:
            break
        # Sizes spread evenly in log scale between 12 and 110 px: many small objects.
        size = float(np.exp(rng.uniform(math.log(12), math.log(110))))
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        category = int(rng.integers(len(CLASSES)))
        kind = CLASSES[category]
        if kind == "circle":
            box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        else:
            points = polygon_points(kind, cx, cy, size, float(rng.uniform(0, 2 * math.pi)))
            box = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
        if any(_iou(box, other) > 0.25 for other in boxes):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == "circle":
            cv2.circle(image, (int(round(cx * 4)), int(round(cy * 4))), int(round(size * 2)), colour, -1,
                       cv2.LINE_AA, shift=2)
        else:
            cv2.fillPoly(image, [np.round(points * 4).astype(np.int32)], colour, cv2.LINE_AA, shift=2)
        box = (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
        boxes.append(box)
        objects.append({"category": category, "bbox": [round(box[0], 2), round(box[1], 2),
                                                       round(box[2] - box[0], 2), round(box[3] - box[1], 2)]})
    return image, objects


def write_coco_split(root: str, split: str, samples, categories: list[dict], jpeg_quality: int = 92) -> str:
    """Write rendered ``samples`` as ``root/split/*.jpg`` and ``root/annotations/instances_split.json``.

    ``samples`` yields (image id, file name, RGB image, [{"category_id", "bbox": [x, y, w, h]}]).
    The json is written last, atomically: its presence means the split is complete.
    """
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for image_id, file_name, image, objects in samples:
        cv2.imwrite(os.path.join(image_dir, file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["category_id"],
                                "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0})
    ann_file = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(ann_file + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    os.replace(ann_file + ".tmp", ann_file)
    return ann_file


def split_samples(split: str, num_images: int, seed: int = 0):
    """(index, RGB image, objects) of each image of a split, the same for the COCO and the VOC copy."""
    split_offset = {"train": 0, "val": 1}.get(split, 2)
    for index in range(num_images):
        image, objects = render_image(np.random.default_rng([seed, split_offset, index]))
        yield index, image, objects


def generate_split(root: str, split: str, num_images: int, seed: int = 0) -> str:
    """Write ``root/split/*.jpg`` and ``root/annotations/instances_split.json``; return the json path."""
    samples = ((index + 1, f"{index:06d}.jpg", image,
                [{"category_id": obj["category"] + 1, "bbox": obj["bbox"]} for obj in objects])
               for index, image, objects in split_samples(split, num_images, seed))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    return write_coco_split(root, split, samples, categories)


def ensure_shapes(root: str = DEFAULT_ROOT, splits: dict[str, int] | None = None, seed: int = 0) -> None:
    """Generate any split of the shapes dataset that is not on disk yet."""
    for split, count in (splits or SPLITS).items():
        if not os.path.isfile(os.path.join(root, "annotations", f"instances_{split}.json")):
            generate_split(root, split, count, seed)


def generate_voc_split(root: str, split: str, num_images: int, seed: int = 0, jpeg_quality: int = 92) -> str:
    """Write the images of ``split`` as ``root/VOCshapes``: JPEGImages/<split>_NNNNNN.jpg, one annotation
    file each (1-based pixel corners), and ImageSets/Main/<split>.txt last, atomically: its presence
    means the split is complete. Returns the list's path."""
    folder = os.path.join(root, f"VOC{VOC_YEAR}")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    ids = []
    for index, image, objects in split_samples(split, num_images, seed):
        voc_id = f"{split}_{index:06d}"
        cv2.imwrite(os.path.join(folder, "JPEGImages", f"{voc_id}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        voc_objects = [{"name": CLASSES[obj["category"]], "box": voc_box_of(*obj["bbox"]),
                        "difficult": min(obj["bbox"][2:]) < DIFFICULT_BELOW} for obj in objects]
        write_voc_annotation(os.path.join(folder, "Annotations", f"{voc_id}.xml"), f"{voc_id}.jpg", image.shape[1],
                             image.shape[0], voc_objects)
        ids.append(voc_id)
    list_path = os.path.join(folder, "ImageSets", "Main", f"{split}.txt")
    with open(list_path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write("\n".join(ids) + "\n")
    os.replace(list_path + ".tmp", list_path)
    return list_path


def ensure_shapes_voc(root: str = VOC_ROOT, splits: dict[str, int] | None = None, seed: int = 0) -> None:
    """Generate any split of the VOC copy of the shapes dataset that is not on disk yet, and its class list."""
    for split, count in (splits or SPLITS).items():
        if not os.path.isfile(os.path.join(root, f"VOC{VOC_YEAR}", "ImageSets", "Main", f"{split}.txt")):
            generate_voc_split(root, split, count, seed)
    names = os.path.join(root, "classes.txt")
    if not os.path.isfile(names):
        with open(names, "w", encoding="utf-8") as handle:
            handle.write("\n".join(CLASSES) + "\n")


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def write_det_images(root: str, split: str, num_images: int, seed: int, jpeg_quality: int) -> list[tuple[str, set]]:
    """The images of ``split`` as Data/DET/<split>/<split>_NNNNNN.JPEG with their annotation files (0-based
    inclusive pixel corners, wnids as names); returns each image's name and the class indices it holds."""
    images, annotations = (os.path.join(root, sub, "DET", split) for sub in ("Data", "Annotations"))
    os.makedirs(images, exist_ok=True)
    os.makedirs(annotations, exist_ok=True)
    written = []
    for index, image, objects in split_samples(split, num_images, seed):
        name = f"{split}_{index:06d}"
        cv2.imwrite(os.path.join(images, f"{name}.JPEG"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        det_objects = [{"name": DET_WNIDS[obj["category"]], "box": tuple(v - 1 for v in voc_box_of(*obj["bbox"])),
                        "difficult": False} for obj in objects]
        write_voc_annotation(os.path.join(annotations, f"{name}.xml"), f"{name}.JPEG", image.shape[1], image.shape[0],
                             det_objects)
        written.append((name, {obj["category"] for obj in objects}))
    return written


def generate_det_split(root: str, split: str, num_images: int, seed: int = 0, jpeg_quality: int = 92) -> str:
    """Write ``split`` in the DET layout. The train split gets a list per class, train_<k>.txt, marking
    each image 1 (it holds class k) or -1 (a negative image of k), as the devkit's; any other split one
    list, <split>.txt (``name index``), and the val split also its two halves, val1.txt and val2.txt. The
    last list is written last, atomically: its presence means the split is complete. Returns its path."""
    written = write_det_images(root, split, num_images, seed, jpeg_quality)
    folder = os.path.join(root, "ImageSets", "DET")
    os.makedirs(folder, exist_ok=True)
    if split == "train":
        lists = {f"train_{k + 1}": [f"{name} {1 if k in classes else -1}" for name, classes in written]
                 for k in range(len(CLASSES))}
    else:
        lines = [f"{name} {index + 1}" for index, (name, _) in enumerate(written)]
        half = (len(lines) + 1) // 2
        lists = {f"{split}1": lines[:half], f"{split}2": lines[half:]} if split == "val" else {}
        lists[split] = lines
    for name, lines in lists.items():
        path = os.path.join(folder, f"{name}.txt")
        write_lines(path + ".tmp", lines)
        os.replace(path + ".tmp", path)
    return path


def ensure_shapes_det(root: str = DET_ROOT, splits: dict[str, int] | None = None, seed: int = 0) -> None:
    """Generate any split of the DET copy of the shapes dataset that is not on disk yet, and its map_det.txt."""
    last_list = {"train": f"train_{len(CLASSES)}.txt", "val": "val.txt"}
    for split, count in (splits or SPLITS).items():
        if not os.path.isfile(os.path.join(root, "ImageSets", "DET", last_list.get(split, f"{split}.txt"))):
            generate_det_split(root, split, count, seed)
    names = os.path.join(root, "map_det.txt")
    if not os.path.isfile(names):
        write_lines(names, [f"{wnid} {index + 1} {name}" for index, (wnid, name) in enumerate(zip(DET_WNIDS, CLASSES))])
