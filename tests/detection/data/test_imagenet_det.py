"""The ImageNet DET reader on a hand-written devkit folder, its bad inputs, and the embedded DET set
trained and scored against the devkit's rules written out here."""

import json
import os
import re
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from detection.config import load_detection_config
from detection.data.imagenet_det import imagenet_det_to_coco, read_imagenet_det_split
from detection.data.voc import VocAnnotationError
from resnet_engine.config import ConfigError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR

OBJECT = "<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>" \
         "</bndbox></object>"
WNIDS = ("n02672831", "n02691156", "n02219486")


def write_image(root, folder, name, objects, size=(40, 30), xml=True):
    """One image of Data/DET/<folder>: its JPEG and its annotation (objects: (wnid, x1, y1, x2, y2) or raw XML)."""
    for sub in ("Data", "Annotations"):
        os.makedirs(os.path.join(root, sub, "DET", folder, os.path.dirname(name)), exist_ok=True)
    cv2.imwrite(os.path.join(root, "Data", "DET", folder, f"{name}.JPEG"), np.zeros((size[1], size[0], 3), np.uint8))
    if xml:
        body = objects if isinstance(objects, str) else "".join(
            OBJECT.format(name=n, x1=x1, y1=y1, x2=x2, y2=y2) for n, x1, y1, x2, y2 in objects)
        with open(os.path.join(root, "Annotations", "DET", folder, f"{name}.xml"), "w", encoding="utf-8") as handle:
            handle.write(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}"
                         "</annotation>")


def write_list(root, name, lines):
    os.makedirs(os.path.join(root, "ImageSets", "DET"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "DET", f"{name}.txt"), "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


@pytest.fixture
def devkit(tmp_path):
    write_image(tmp_path, "train", "ILSVRC2013_train/n02672831/a", [("n02672831", 0, 2, 39, 29)])
    write_image(tmp_path, "train", "ILSVRC2013_train/n02691156/b", [("n02691156", 3, 4, 13, 24),
                                                                    ("n02672831", 5, 5, 9, 9)])
    write_image(tmp_path, "train", "ILSVRC2013_train_extra0/c", [], xml=False)  # negative, no annotation file
    write_list(tmp_path, "train_1", ["ILSVRC2013_train/n02672831/a 1", "ILSVRC2013_train/n02691156/b 1",
                                     "ILSVRC2013_train_extra0/c -1"])
    write_list(tmp_path, "train_2", ["ILSVRC2013_train/n02691156/b 1", "ILSVRC2013_train_extra0/c -1"])
    write_image(tmp_path, "val", "ILSVRC2012_val_00000001", [("n02219486", 1, 1, 20, 20)])
    write_image(tmp_path, "val", "ILSVRC2012_val_00000002", [])
    write_list(tmp_path, "val1", ["ILSVRC2012_val_00000001 1"])
    write_list(tmp_path, "val2", ["ILSVRC2012_val_00000002 2"])
    with open(tmp_path / "map_det.txt", "w", encoding="utf-8") as handle:
        handle.write("n02691156 2 airplane\nn02672831 1 accordion\nn02219486 3 ant\n")
    return tmp_path


def test_lists_joined_negatives_kept_and_boxes_as_written(devkit):
    data = imagenet_det_to_coco(str(devkit), "train+val1", str(devkit / "map_det.txt"), train=True)
    # map_det.txt's order is its indices', not its lines'.
    assert [c["name"] for c in data["categories"]] == ["n02672831", "n02691156", "n02219486"]
    # Each image once, in list order (b is in train_1 and train_2), then val1's.
    assert [image["file_name"] for image in data["images"]] == [
        "Data/DET/train/ILSVRC2013_train/n02672831/a.JPEG", "Data/DET/train/ILSVRC2013_train/n02691156/b.JPEG",
        "Data/DET/train/ILSVRC2013_train_extra0/c.JPEG", "Data/DET/val/ILSVRC2012_val_00000001.JPEG"]
    # 0-based inclusive corners -> [x1, y1, x2 - x1, y2 - y1]; the negative image c has no object.
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in data["annotations"]] == [
        (1, 1, [0, 2, 39, 27]), (2, 2, [3, 4, 10, 20]), (2, 1, [5, 5, 4, 4]), (4, 3, [1, 1, 19, 19])]
    assert (data["images"][2]["width"], data["images"][2]["height"]) == (40, 30)  # from the JPEG's header


def test_an_image_in_two_lists_of_a_split_is_read_once(devkit):
    """train_1+train_2 share b and c: each is one image, as with the part train."""
    names = [image["file_name"] for image in
             imagenet_det_to_coco(str(devkit), "train_1+train_2+val1+val1", str(devkit / "map_det.txt"),
                                  train=True)["images"]]
    assert names == ["Data/DET/train/ILSVRC2013_train/n02672831/a.JPEG",
                     "Data/DET/train/ILSVRC2013_train/n02691156/b.JPEG",
                     "Data/DET/train/ILSVRC2013_train_extra0/c.JPEG", "Data/DET/val/ILSVRC2012_val_00000001.JPEG"]


def test_a_negative_image_trains_as_background(devkit):
    from detection.data.loader import build_train_dataset

    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes_det.yaml"), [
        f"data.train.root={devkit}", "data.train.split=train", f"data.train.names={devkit}/map_det.txt",
        "data.synthetic=''", "input.min_size_train=[30]", "input.max_size_train=40", "input.random_flip=0"])
    dataset = build_train_dataset(cfg)
    negative = dataset[2]
    assert negative["file_name"].endswith("ILSVRC2013_train_extra0/c.JPEG")
    assert tuple(negative["boxes"].shape) == (0, 4) and (negative["width"], negative["height"]) == (40, 30)
    assert build_train_dataset(load_detection_config(os.path.join(ROOT, "configs", "shapes_det.yaml"), [
        f"data.train.root={devkit}", "data.train.split=train", f"data.train.names={devkit}/map_det.txt",
        "data.synthetic=''", "data.filter_empty=true"])).__len__() == 2


def test_without_a_synset_list_the_annotations_give_the_classes_with_a_warning(devkit):
    with pytest.warns(UserWarning, match=r"data.train.names is empty: the 2 synsets of the annotations"):
        data = imagenet_det_to_coco(str(devkit), "train", "", train=True)
    assert [c["name"] for c in data["categories"]] == ["n02672831", "n02691156"]


def bad_annotation_message(root, objects, size=(40, 30)):
    write_image(root, "val", "bad", objects, size=size)
    write_list(root, "val", ["bad 1"])
    with pytest.raises(VocAnnotationError) as error:
        imagenet_det_to_coco(str(root), "val", str(root / "map_det.txt"), train=True, on_bad_image="fail")
    return str(error.value)


@pytest.mark.parametrize("objects, expected", [
    ("<object><name>n02672831</name></object>", r"bad.xml: object #1 \(n02672831\) has no <bndbox>"),
    ([("n09999999", 1, 1, 5, 5)], r"object #1 is of class 'n09999999', which is not in the class list"),
    ([("n02672831", 0, 0, 41, 5)], r"box 0,0,41,5 is outside the 40x30 image \(coordinates run from 0"),
    ([("n02672831", -1, 0, 5, 5)], r"box -1,0,5,5 is outside"),
    ("<object><name>n0", r"bad.xml: not valid XML"),
])
def test_a_bad_annotation_is_one_line_naming_the_file(devkit, objects, expected):
    message = bad_annotation_message(devkit, objects)
    assert "\n" not in message and "set data.on_bad_image=skip" in message
    assert re.search(expected, message), message


def test_bad_images_are_skipped_and_counted(devkit):
    write_image(devkit, "val", "unknown_class", [("n09999999", 1, 1, 5, 5)])
    write_image(devkit, "val", "no_xml", [], xml=False)
    write_list(devkit, "val1", ["ILSVRC2012_val_00000001 1", "unknown_class 2", "no_xml 3", "missing 4"])
    with pytest.warns(UserWarning, match=r"ImageNet DET val1: 3 of 4 images skipped: .*n09999999.*no_xml.xml: "
                                         r"annotation not found.*missing.JPEG: image not found"):
        data = imagenet_det_to_coco(str(devkit), "val1", str(devkit / "map_det.txt"), train=True)
    assert [image["det_id"] for image in data["images"]] == ["ILSVRC2012_val_00000001"]


def test_missing_files_and_keys_are_one_line(devkit):
    with pytest.raises(ConfigError, match=r"ImageNet DET image list not found: .*ImageSets/DET/val3.txt .*data.test"):
        read_imagenet_det_split(str(devkit), "val3", "", False, "skip", "data.test")
    with pytest.raises(ConfigError, match=r"ImageNet DET folder not found: .*nowhere \(set data.train.root"):
        read_imagenet_det_split(str(devkit / "nowhere"), "val1", "", True, "skip", "data.train")
    with pytest.raises(ConfigError, match=r"synset list not found: .*nothing.txt \(set data.train.names"):
        read_imagenet_det_split(str(devkit), "val1", str(devkit / "nothing.txt"), True, "skip", "data.train")
    (devkit / "bad_map.txt").write_text("n02672831 accordion\n")
    with pytest.raises(ConfigError, match=r"bad_map.txt line 1: 'n02672831 accordion' is not 'wnid index name'"):
        read_imagenet_det_split(str(devkit), "val1", str(devkit / "bad_map.txt"), True, "skip", "data.train")
    (devkit / "gap_map.txt").write_text("n02672831 1 accordion\nn02691156 3 airplane\n")
    with pytest.raises(ConfigError, match=r"gap_map.txt: give each synset once, .*the indices 1 to the number"):
        read_imagenet_det_split(str(devkit), "val1", str(devkit / "gap_map.txt"), True, "skip", "data.train")
    with pytest.raises(ConfigError, match=r"data.train.split='val1.txt': give list names of ImageSets/DET joined"):
        read_imagenet_det_split(str(devkit), "val1.txt", "", True, "skip", "data.train")
    with pytest.raises(ConfigError, match=r"data.train.format=imagenet_det needs data.train.root"):
        load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), ["data.train.format=imagenet_det"])


def test_a_test_list_without_annotations_lists_none(devkit):
    write_image(devkit, "test", "ILSVRC2015_test_00000001", [], xml=False)
    write_list(devkit, "test", ["ILSVRC2015_test_00000001 1"])
    data = imagenet_det_to_coco(str(devkit), "test", str(devkit / "map_det.txt"), train=False)
    assert "annotations" not in data and len(data["images"]) == 1
    with pytest.raises(ConfigError, match=r"names the test list"):
        imagenet_det_to_coco(str(devkit), "train+test", str(devkit / "map_det.txt"), train=True)


def devkit_truth(root) -> dict:
    """{image name: [(wnid, corners)]} read straight from the XML files of val2."""
    with open(os.path.join(root, "ImageSets", "DET", "val2.txt"), encoding="utf-8") as handle:
        images = [line.split()[0] for line in handle if line.strip()]
    truth = {}
    for name in images:
        tree = ET.parse(os.path.join(root, "Annotations", "DET", "val", f"{name}.xml"))
        truth[name] = [(o.findtext("name"), [float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
                       for o in tree.findall("object")]
    return truth


def eval_detection_ap(truth: dict, detections: list[tuple[str, float, list[float]]], wnid: str) -> float:
    """One class's AP by the loops of the ILSVRC devkit's eval_detection.m: per image by decreasing score,
    each detection to the unfound object of highest IoU at or above min(0.5, wh/((w+10)(h+10))); then
    VOCap over all detections by decreasing score (ties by image order, then given order)."""
    order = {name: rank for rank, name in enumerate(truth)}
    labelled = []
    for name, objects in truth.items():
        boxes = [box for n, box in objects if n == wnid]
        found = [False] * len(boxes)
        mine = sorted([(score, i, box) for i, (image, score, box) in enumerate(detections) if image == name],
                      key=lambda d: (-d[0], d[1]))
        for score, i, bb in mine:
            best, match = -np.inf, -1
            for k, gt in enumerate(boxes):
                iw = min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1
                ih = min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1
                if found[k] or iw <= 0 or ih <= 0:
                    continue
                union = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - iw * ih
                w, h = gt[2] - gt[0] + 1, gt[3] - gt[1] + 1
                threshold = min(0.5, w * h / ((w + 10) * (h + 10)))
                if iw * ih / union >= threshold and iw * ih / union > best:
                    best, match = iw * ih / union, k
            if match >= 0:
                found[match] = True
            labelled.append((-score, order[name], i, match >= 0))
    positives = sum(1 for objects in truth.values() for n, _ in objects if n == wnid)
    hits = np.array([hit for *_, hit in sorted(labelled)], dtype=float)
    tp = np.cumsum(hits)
    recall, precision = tp / positives, tp / np.arange(1, len(hits) + 1)
    mrec, mpre = np.concatenate(([0], recall, [1])), np.concatenate(([0], precision, [0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def test_the_embedded_det_set_trains_and_scores_as_the_devkit_does(tmp_path):
    from detection.data.shapes import DET_WNIDS, ensure_shapes_det
    from detection.training import train_detector

    root = tmp_path / "shapes_det"
    ensure_shapes_det(str(root), {"train": 6, "val": 16})
    out = tmp_path / "out"
    overrides = TINY_DETECTOR + [f"output_dir={out}", f"data.train.root={root}", f"data.test.root={root}",
                                 f"data.train.names={root}/map_det.txt", f"data.test.names={root}/map_det.txt",
                                 "test.score_thresh=0.0", "test.detections_per_img=20", "data.synthetic=''"]
    train_detector(load_detection_config(os.path.join(ROOT, "configs", "shapes_det.yaml"), overrides))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_category"]) == set(DET_WNIDS)
    # The reference reads what the devkit reads: the XML files, val2.txt, map_det.txt and the results file.
    names = dict(reversed(line.split()) for line in (root / "ImageSets" / "DET" / "val2.txt").read_text().splitlines())
    wnids = {line.split()[1]: line.split()[0] for line in (root / "map_det.txt").read_text().splitlines()}
    lines = [line.split() for line in (out / "det_results.txt").read_text().splitlines()]
    assert lines and len(lines) == len(json.loads((out / "detections.json").read_text()))
    truth = devkit_truth(root)
    expected = []
    for class_id, wnid in wnids.items():
        mine = [(names[index], float(score), [float(v) for v in box]) for index, label, score, *box in lines
                if label == class_id]
        if any(n == wnid for objects in truth.values() for n, _ in objects):
            expected.append(100 * eval_detection_ap(truth, mine, wnid))
            assert metrics["per_category"][wnid] == pytest.approx(expected[-1], abs=1e-3), wnid
    assert metrics["det"]["mAP"] == pytest.approx(np.mean(expected), abs=1e-3)


def test_the_map_equals_the_devkit_loops_on_jittered_detections(tmp_path):
    from detection.data.shapes import ensure_shapes_det
    from detection.evaluation.det_eval import evaluate_det

    root = tmp_path / "shapes_det"
    ensure_shapes_det(str(root), {"val": 40})
    gt = read_imagenet_det_split(str(root), "val2", f"{root}/map_det.txt", False, "skip", "data.test").dataset
    rng = np.random.default_rng(0)
    records = []
    for ann in gt["annotations"]:  # each object found with a jitter of a few pixels, some twice
        for _ in range(1 + int(rng.random() < 0.3)):
            x, y, w, h = (np.array(ann["bbox"]) + rng.integers(-4, 5, 4)).tolist()
            records.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": [x, y, max(w, 1), max(h, 1)]})
    for image in gt["images"]:  # and boxes anywhere
        for _ in range(3):
            x, y = rng.integers(0, 150, 2).tolist()
            records.append({"image_id": image["id"], "category_id": int(rng.integers(1, 6)),
                            "bbox": [x, y, int(rng.integers(10, 60)), int(rng.integers(10, 60))]})
    for record, score in zip(records, rng.permutation(len(records)) + 1):
        record["score"] = float(score) / (len(records) + 1)
    metrics = evaluate_det(gt, records)
    names = {image["id"]: image["det_id"] for image in gt["images"]}
    truth = devkit_truth(root)
    for category in gt["categories"]:
        mine = [(names[r["image_id"]], r["score"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                                                   r["bbox"][1] + r["bbox"][3]]) for r in records
                if r["category_id"] == category["id"]]
        expected = 100 * eval_detection_ap(truth, mine, category["name"])
        assert metrics["per_category"][category["name"]] == pytest.approx(expected, abs=1e-9), category["name"]
    assert 30 < metrics["det"]["mAP"] < 100
