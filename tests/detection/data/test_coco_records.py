"""CocoDetection's flat records: the boxes, labels, ids, names and sizes of a fresh pycocotools read of
the same json, and the same training samples as the list of record dicts they are packed from."""

import contextlib
import io
import json
import math

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detection.data.coco import CocoDetection, coco_from_dict
from detection.data.datasets import ConcatDetection
from detection.data.transforms import TrainTransform
from resnet_engine.flat_records import FlatRecords

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
# (image id, file name, width, height): ids out of order, a unicode name, an image without boxes.
IMAGES = [(7, "b.png", 50, 40), (3, "çà 图.png", 40, 60), (12, "empty.png", 30, 30), (5, "d.png", 64, 48)]


@pytest.fixture
def coco_json(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    annotations = []
    for image_id, name, width, height in IMAGES:
        cv2.imwrite(str(tmp_path / "img" / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        for _ in range(0 if name == "empty.png" else int(rng.integers(1, 6))):
            x, y = rng.uniform(0, width - 5), rng.uniform(0, height - 5)
            # Some boxes reach past the image: the records clip them.
            w, h = rng.uniform(2, width * 0.6), rng.uniform(2, height * 0.6)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CATEGORIES[int(rng.integers(0, 3))]["id"],
                                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                "iscrowd": int(rng.random() < 0.2), "area": round(w * h, 2)})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": i, "file_name": n, "width": w, "height": h}
                                           for i, n, w, h in IMAGES],
                                "annotations": annotations, "categories": CATEGORIES}, ensure_ascii=False),
                    encoding="utf-8")
    return str(path), str(tmp_path / "img")


def expected_records(ann_file: str) -> list[dict]:
    """The records by hand from pycocotools: xywh -> clipped xyxy, labels 1..K in category id order."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    label_of = {category_id: rank + 1 for rank, category_id in enumerate(sorted(coco.getCatIds()))}
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        width, height = info["width"], info["height"]
        boxes, labels, crowd = [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            x, y, w, h = ann["bbox"]
            box = [min(max(x, 0), width), min(max(y, 0), height), min(x + w, width), min(y + h, height)]
            (crowd if ann["iscrowd"] else boxes).append(box)
            if not ann["iscrowd"]:
                labels.append(label_of[ann["category_id"]])
        records.append({"image_id": image_id, "file_name": info["file_name"], "width": float(width),
                        "height": float(height), "boxes": np.array(boxes, np.float32).reshape(-1, 4),
                        "labels": np.array(labels, np.int64), "crowd_boxes": np.array(crowd, np.float32).reshape(-1, 4)})
    return records


@pytest.mark.filterwarnings("ignore:.*clipped to the image")
def test_the_records_are_those_of_a_fresh_pycocotools_read(coco_json):
    dataset = CocoDetection(*coco_json, train=False)
    assert isinstance(dataset.records, FlatRecords)
    expected = expected_records(coco_json[0])
    assert len(dataset.records) == len(expected) == 4
    assert sum(len(r["crowd_boxes"]) for r in expected) > 0 and sum(len(r["boxes"]) for r in expected) > 5
    for got, want in zip(dataset.records, expected, strict=True):
        assert list(got) == list(want)
        for key, value in want.items():
            assert type(got[key]) is type(value), key
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype, key
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            else:
                assert got[key] == value, key
    np.testing.assert_array_equal(dataset.aspect_ratios(), [r["width"] / r["height"] for r in expected])


@pytest.mark.filterwarnings("ignore:.*clipped to the image")
def test_training_samples_are_those_of_the_list_of_record_dicts(coco_json):
    flat = CocoDetection(*coco_json, TrainTransform([24, 32], 64), train=True)
    as_list = CocoDetection(*coco_json, TrainTransform([24, 32], 64), train=True)
    as_list.records = list(as_list.records)  # the list of record dicts, as the records were kept before
    assert isinstance(as_list.records, list) and flat.coco is None
    for index in range(len(flat)):
        for seed in (0, 11, 12345):
            got, want = flat[(index, seed)], as_list[(index, seed)]
            assert sorted(got) == sorted(want)
            for key, value in want.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(got[key], value), key
                else:
                    assert got[key] == value, key
    concat = ConcatDetection([flat, flat])
    # The second part's ids start after the first's largest (12): 3 + 10 = 13.
    assert concat.image_ids() == [3, 5, 7, 12, 13, 15, 17, 22]


def per_annotation_records(coco: COCO, label_of: dict, filter_empty: bool) -> tuple[list[dict], dict]:
    """(records, counts) by a plain loop over each image's annotations in json order, in Python floats."""
    counts = {"dropped": 0, "clipped": 0, "unknown_category": 0}
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        width, height = float(info.get("width", 0)), float(info.get("height", 0))
        limits = (width or math.inf, height or math.inf) * 2
        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = [x, y, x + w, y + h]
            clipped = [min(max(value, 0.0), limit) for value, limit in zip(box, limits)]
            if (not all(math.isfinite(v) for v in box) or w <= 0 or h <= 0
                    or clipped[2] - clipped[0] < 1e-3 or clipped[3] - clipped[1] < 1e-3):
                counts["dropped"] += 1
                continue
            counts["clipped"] += clipped != box
            if ann["category_id"] not in label_of:
                counts["unknown_category"] += 1
            elif ann.get("iscrowd", 0):
                crowd.append(clipped)
            else:
                boxes.append(clipped)
                labels.append(label_of[ann["category_id"]])
        if filter_empty and not boxes:
            continue
        records.append({"image_id": image_id, "file_name": info["file_name"], "width": width, "height": height,
                        "boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64),
                        "crowd_boxes": np.array(crowd, np.float32).reshape(-1, 4)})
    return records, counts


def messy_coco(rng: np.random.Generator) -> dict:
    """Images of unknown size (0), boxes past the image, outside it, of no or negative size, NaN, of an
    unknown category, crowd ones, annotations of an image id not in 'images', images without boxes."""
    images = [{"id": int(i), "file_name": f"{i}.jpg", "width": int(rng.choice([0, 40, 64])),
               "height": int(rng.choice([0, 30, 48]))} for i in rng.permutation(np.arange(1, 41))]
    annotations = []
    for k in range(300):
        x, y = rng.uniform(-20, 70, 2)
        w, h = rng.choice([rng.uniform(0.0005, 40), 0.0, -3.0, float("nan")], 2, p=[0.85, 0.05, 0.05, 0.05])
        annotations.append({"id": k + 1, "image_id": int(rng.integers(1, 46 if k % 50 else 41)),
                            "category_id": int(rng.choice([1, 18, 90, 77])), "bbox": [x, y, w, h],
                            "iscrowd": int(rng.random() < 0.15)})
    annotations = [a for a in annotations if a["image_id"] % 7]  # images 7, 14, ... have no box
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


@pytest.mark.parametrize("filter_empty", [False, True])
@pytest.mark.parametrize("index_annotations", [True, False])  # False: how a training set is read
@pytest.mark.filterwarnings("ignore:.*boxes dropped")
def test_the_records_are_those_of_a_loop_over_each_annotation(tmp_path, filter_empty, index_annotations):
    data = messy_coco(np.random.default_rng(3))
    coco = coco_from_dict(data, "messy.json", index_annotations)
    assert bool(coco.anns) == index_annotations and len(coco.imgs) == 40
    for image in data["images"]:
        (tmp_path / image["file_name"]).touch()  # the records are what is compared: the pixels are never read
    dataset = CocoDetection("messy.json", str(tmp_path), coco=coco, train=True, filter_empty=filter_empty)
    label_of = dataset.category_map.label_of()
    assert 77 not in label_of
    expected, counts = per_annotation_records(coco_from_dict(data, "messy.json"), label_of, filter_empty)
    assert all(counts.values()) and (len(expected) < 35 if filter_empty else len(expected) == 40)
    assert (dataset.stats.dropped, dataset.stats.clipped, dataset.stats.unknown_category) == tuple(counts.values())
    assert dataset.stats.unknown_image == sum(a["image_id"] > 40 for a in data["annotations"]) > 0
    assert len(dataset.records) == len(expected)
    for got, want in zip(dataset.records, expected, strict=True):
        assert list(got) == list(want)
        for key, value in want.items():
            assert type(got[key]) is type(value), key
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype, key
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            else:
                assert got[key] == value, key
