"""CocoDetection's flat records: the boxes, labels, ids, names and sizes of a fresh pycocotools read of
the same json, and the same training samples as the list of record dicts they are packed from."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detection.data.coco import CocoDetection
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
