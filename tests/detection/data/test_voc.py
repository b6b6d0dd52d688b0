"""The VOC reader on a hand-written VOCdevkit, its bad inputs, the embedded VOC set trained and scored,
and the VOC/COCO class-name aliases of fine-tuning."""

import json
import logging
import os
import re
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch

from detection.config import load_detection_config
from detection.data.coco import CategoryMap
from detection.data.voc import VOC_CLASSES, VocAnnotationError, read_voc_split, voc_to_coco
from detection.weights import CLASS_KEYS, fit_class_layers
from resnet_engine.config import ConfigError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR

OBJECT = "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>" \
         "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"


def write_image(root, year, voc_id, objects, size=(40, 30), image_set="trainval", xml=True):
    """One image of ROOT/VOC<year>: its JPEG, its annotation (objects: (name, difficult, x1, y1, x2, y2)
    or raw XML text) and its line in ImageSets/Main/<image_set>.txt."""
    folder = os.path.join(root, f"VOC{year}")
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    cv2.imwrite(os.path.join(folder, "JPEGImages", f"{voc_id}.jpg"), np.zeros((size[1], size[0], 3), np.uint8))
    if xml:
        body = objects if isinstance(objects, str) else "".join(
            OBJECT.format(name=n, difficult=d, x1=x1, y1=y1, x2=x2, y2=y2) for n, d, x1, y1, x2, y2 in objects)
        with open(os.path.join(folder, "Annotations", f"{voc_id}.xml"), "w", encoding="utf-8") as handle:
            handle.write(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}"
                         "</annotation>")
    with open(os.path.join(folder, "ImageSets", "Main", f"{image_set}.txt"), "a", encoding="utf-8") as handle:
        handle.write(voc_id + "\n")


@pytest.fixture
def devkit(tmp_path):
    write_image(tmp_path, "2007", "000005", [("dog", 0, 1, 2, 40, 30), ("chair", 1, 5, 6, 9, 10)])
    write_image(tmp_path, "2007", "000007", [])
    write_image(tmp_path, "2012", "2008_000001", [("aeroplane", 0, 3, 4, 13, 24)])
    return tmp_path


def test_coordinates_difficult_flags_and_concatenated_years(devkit):
    train = voc_to_coco(str(devkit), "2007_trainval+2012_trainval", list(VOC_CLASSES), train=True)
    assert [image["file_name"] for image in train["images"]] == [
        "VOC2007/JPEGImages/000005.jpg", "VOC2007/JPEGImages/000007.jpg", "VOC2012/JPEGImages/2008_000001.jpg"]
    assert [c["name"] for c in train["categories"]] == list(VOC_CLASSES)
    # Training: the difficult chair is left out; 1-based corners minus 1 -> [x1 - 1, y1 - 1, x2 - x1, y2 - y1].
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in train["annotations"]] == [
        (1, VOC_CLASSES.index("dog") + 1, [0, 1, 39, 28]), (3, VOC_CLASSES.index("aeroplane") + 1, [2, 3, 10, 20])]
    test = voc_to_coco(str(devkit), "2007_trainval", list(VOC_CLASSES), train=False)
    chair = [a for a in test["annotations"] if a["category_id"] == VOC_CLASSES.index("chair") + 1]
    assert [(a["bbox"], a["difficult"], a["iscrowd"]) for a in chair] == [([4, 5, 4, 4], 1, 1)]


def test_an_image_whose_objects_are_all_difficult_is_left_out_of_training(devkit, caplog):
    """As py-faster-rcnn: trained, its difficult person would be background. An image without any object
    (000007) stays, as a background image; a test set keeps every image."""
    write_image(devkit, "2007", "000009", [("person", 1, 2, 2, 20, 20)])
    with caplog.at_level(logging.INFO, logger="detection.data.voc"):
        train = voc_to_coco(str(devkit), "2007_trainval", list(VOC_CLASSES), train=True)
    assert [image["voc_id"] for image in train["images"]] == ["000005", "000007"]
    assert caplog.messages == ["VOC 2007_trainval: 1 image(s) whose objects are all difficult are left out of training "
                               "(as py-faster-rcnn leaves them out)"]
    test = voc_to_coco(str(devkit), "2007_trainval", list(VOC_CLASSES), train=False)
    assert [image["voc_id"] for image in test["images"]] == ["000005", "000007", "000009"]


def bad_annotation_message(root, objects, size=(40, 30)):
    write_image(root, "2007", "000009", objects, size=size)
    with pytest.raises(VocAnnotationError) as error:
        voc_to_coco(str(root), "2007_trainval", list(VOC_CLASSES), train=True, on_bad_image="fail")
    return str(error.value)


@pytest.mark.parametrize("objects, expected", [
    ("<object><name>dog</name></object>", r"000009.xml: object #1 \(dog\) has no <bndbox>"),
    ("<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>",
     r"000009.xml: object #1 has no <name>"),
    ([("unicorn", 0, 1, 1, 5, 5)], r"object #1 is of class 'unicorn', which is not in the class list"),
    ([("dog", 0, 1, 1, 41, 5)], r"box 1,1,41,5 is outside the 40x30 image"),
    ([("dog", 0, 9, 1, 5, 5)], r"xmin 9 xmax 5 .*: give xmin <= xmax"),
    ("<object><name>dog", r"000009.xml: not valid XML"),
])
def test_a_bad_annotation_is_one_line_naming_the_file(tmp_path, objects, expected):
    message = bad_annotation_message(tmp_path, objects)
    assert "\n" not in message and "set data.on_bad_image=skip" in message
    assert re.search(expected, message), message


def test_bad_images_are_skipped_and_counted_when_training(devkit):
    write_image(devkit, "2007", "000009", [("unicorn", 0, 1, 1, 5, 5)])
    write_image(devkit, "2007", "000010", [], xml=False)
    os.remove(os.path.join(devkit, "VOC2007", "JPEGImages", "000005.jpg"))
    with pytest.warns(UserWarning, match=r"VOC 2007_trainval: 3 of 4 images skipped: .*000005.jpg: image not found"
                                         r".*unicorn.*000010.xml: annotation not found"):
        data = voc_to_coco(str(devkit), "2007_trainval", list(VOC_CLASSES), train=True)
    assert [image["voc_id"] for image in data["images"]] == ["000007"]


def test_missing_list_and_folder_name_the_key(devkit):
    with pytest.raises(ConfigError, match=r"VOC image list not found: .*VOC2007/ImageSets/Main/test.txt .*data.test"):
        read_voc_split(str(devkit), "2007_test", "", False, "skip", "data.test")
    with pytest.raises(ConfigError, match=r"VOC folder not found: .*nowhere \(set data.train.root"):
        read_voc_split(str(devkit / "nowhere"), "2007_trainval", "", True, "skip", "data.train")
    with pytest.raises(ConfigError, match=r"give YEAR_SET parts joined by '\+'"):
        read_voc_split(str(devkit), "2007trainval", "", True, "skip", "data.train")


def test_a_test_split_without_annotations_lists_none(devkit):
    write_image(devkit, "2012", "2008_000002", [], image_set="test", xml=False)
    data = voc_to_coco(str(devkit), "2012_test", list(VOC_CLASSES), train=False)
    assert "annotations" not in data and data["images"][0]["voc_set"] == "test"
    # VOC2012 test's files hold the person boxes of other tasks: never read as detection ground truth.
    write_image(devkit, "2012", "2008_000003", [("person", 0, 1, 1, 5, 5)], image_set="test")
    data = voc_to_coco(str(devkit), "2012_test", list(VOC_CLASSES), train=False)
    assert "annotations" not in data and len(data["images"]) == 2
    with pytest.raises(ConfigError, match=r"data.train.split names 2012_test, whose ground truth only the VOC "):
        voc_to_coco(str(devkit), "2007_trainval+2012_test", list(VOC_CLASSES), train=True)


def test_config_needs_root_and_split():
    with pytest.raises(ConfigError, match=r"data.test.format=voc needs data.test.root, the VOCdevkit folder, and "
                                          r"data.test.split"):
        load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), ["data.test.format=voc"])


def test_coco_names_of_voc_classes_keep_their_rows():
    # A file of COCO-named classes fine-tuned to VOC names: each shared class keeps its own rows.
    file_names = ["person", "airplane", "tv", "dining table", "giraffe"]
    model_names = ["aeroplane", "diningtable", "tvmonitor", "cow"]
    rows = {"roi_heads.predictor.cls_score": 1, "roi_heads.predictor.bbox_pred": 4}
    state = {f"{layer}.{p}": torch.arange((len(file_names) + 1) * n, dtype=torch.float).reshape(-1, *([1] if p == "weight" else []))
             for layer, n in rows.items() for p in ("weight", "bias")}
    own = {f"{layer}.{p}": torch.full(((len(model_names) + 1) * n, *([1] if p == "weight" else [])), -1.0)
           for layer, n in rows.items() for p in ("weight", "bias")}
    fitted = fit_class_layers(state, {"class_names": file_names}, own, CategoryMap([1, 2, 3, 4], model_names),
                              True, "coco.pth")
    # Model label -> file label: background 0 -> 0, aeroplane 1 -> 2, diningtable 2 -> 4, tvmonitor 3 -> 3.
    assert fitted["roi_heads.predictor.cls_score.bias"].tolist() == [0, 2, 4, 3, -1]
    assert fitted["roi_heads.predictor.bbox_pred.bias"][4:8].tolist() == [8, 9, 10, 11]
    assert set(CLASS_KEYS) <= set(fitted)


def devkit_truth(root, split: str) -> dict:
    """{voc_id: [(name, 1-based corners, difficult)]} read straight from the XML files."""
    year, image_set = split.split("_", 1)
    folder = os.path.join(root, f"VOC{year}")
    with open(os.path.join(folder, "ImageSets", "Main", f"{image_set}.txt"), encoding="utf-8") as handle:
        ids = handle.read().split()
    truth = {}
    for voc_id in ids:
        tree = ET.parse(os.path.join(folder, "Annotations", f"{voc_id}.xml"))
        truth[voc_id] = [(o.findtext("name"), [float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")],
                          o.findtext("difficult") == "1") for o in tree.findall("object")]
    return truth


def area_under_envelope(labels: list[int], positives: int) -> float:
    """VOC2010 AP from its definition: labels (1 true, 0 false positive) by decreasing score; at each recall
    the curve reaches, the highest precision at that recall or beyond, times the recall gained."""
    tp = np.cumsum(np.array(labels) == 1)
    precision = tp / np.arange(1, len(labels) + 1)
    recall = tp / positives
    ap, previous = 0.0, 0.0
    for level in sorted(set(recall.tolist())):
        if level > previous:
            ap += (level - previous) * precision[recall >= level].max()
            previous = level
    return ap


# VOCevaldet's ``0:0.1:1`` as MATLAB holds it: 0.6 and 0.7 counted down from 1, exact.
MATLAB_TENTHS = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def eleven_point_ap(labels: list[int], positives: int) -> float:
    """VOC2007 AP from its definition: the mean over the 11 recall points of the highest precision at a
    recall at least that high (0 where none reaches it)."""
    tp = np.cumsum(np.array(labels) == 1)
    precision = tp / np.arange(1, len(labels) + 1)
    recall = tp / positives
    return sum(precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in MATLAB_TENTHS) / 11


def devkit_class_ap(truth: dict, lines: list[str], name: str, metric: str = "voc2010") -> float:
    """The AP of one class from a comp4 file's lines and the XML ground truth, in the devkit's pixels."""
    detections = sorted(((float(s), i, voc_id, [float(v) for v in box]) for i, (voc_id, s, *box) in
                         enumerate(line.split() for line in lines)), key=lambda d: (-d[0], d[1]))
    taken, labels = set(), []
    for _, _, voc_id, box in detections:
        candidates = [(j, b, d) for j, (n, b, d) in enumerate(truth[voc_id]) if n == name]
        best, match = -1.0, None
        for j, gt, difficult in candidates:
            iw = min(box[2], gt[2]) - max(box[0], gt[0]) + 1
            ih = min(box[3], gt[3]) - max(box[1], gt[1]) + 1
            if iw > 0 and ih > 0:
                iou = iw * ih / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - iw * ih)
                if iou > best:
                    best, match = iou, (j, difficult)
        if best < 0.5:
            labels.append(0)
        elif not match[1]:
            labels.append(0 if (voc_id, match[0]) in taken else 1)
            taken.add((voc_id, match[0]))
    positives = sum(1 for objects in truth.values() for n, _, d in objects if n == name and not d)
    if not positives:
        return float("nan")
    return (eleven_point_ap if metric == "voc2007" else area_under_envelope)(labels, positives)


def jittered_detections(gt: dict, rng: np.random.Generator) -> list[dict]:
    """Detections of a ground truth: each object found (difficult ones too) with an integer jitter of a few
    pixels, some twice, plus boxes anywhere; distinct scores of 6 decimals, as the result files keep them."""
    detections = []
    for ann in gt["annotations"]:
        for _ in range(1 + int(rng.random() < 0.3)):
            x, y, w, h = (np.array(ann["bbox"]) + rng.integers(-3, 4, 4)).tolist()
            detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                               "bbox": [x, y, max(w, 1), max(h, 1)]})
    for image in gt["images"]:
        for _ in range(3):
            x, y = rng.integers(0, 150, 2).tolist()
            detections.append({"image_id": image["id"], "category_id": int(rng.integers(1, 6)),
                               "bbox": [x, y, int(rng.integers(10, 60)), int(rng.integers(10, 60))]})
    scores = rng.permutation(len(detections)) + 1
    for record, score in zip(detections, scores):
        record["score"] = round(float(score) / (len(detections) + 1), 6)
    return detections


@pytest.mark.parametrize("metric", ["voc2010", "voc2007"])
def test_the_map_equals_the_devkit_rules_on_the_result_files(tmp_path, metric):
    from detection.data.shapes import ensure_shapes_voc
    from detection.evaluation.voc_eval import score_voc_test_set

    root = tmp_path / "shapes_voc"
    ensure_shapes_voc(str(root), {"val": 30})
    gt = read_voc_split(str(root), "shapes_val", f"{root}/classes.txt", False, "skip", "data.test").dataset
    detections = jittered_detections(gt, np.random.default_rng(0))
    metrics = score_voc_test_set(gt, [image["id"] for image in gt["images"]], detections, [], metric,
                                 str(tmp_path / "out"))
    truth = devkit_truth(root, "shapes_val")
    assert any(d for objects in truth.values() for _, _, d in objects)  # difficult objects are in the test
    results_dir = tmp_path / "out" / "results" / "VOCshapes" / "Main"
    for name, ap in metrics["per_category"].items():
        lines = (results_dir / f"comp4_det_val_{name}.txt").read_text().splitlines()
        assert ap == pytest.approx(100 * devkit_class_ap(truth, lines, name, metric), abs=1e-9), name
    assert 30 < metrics["voc"]["mAP"] < 100


def test_the_embedded_voc_set_trains_and_scores_end_to_end(tmp_path):
    from detection.data.shapes import ensure_shapes_voc
    from detection.evaluation.voc_eval import evaluate_voc
    from detection.training import train_detector

    root = tmp_path / "shapes_voc"
    ensure_shapes_voc(str(root), {"train": 6, "val": 4})
    out = tmp_path / "out"
    overrides = TINY_DETECTOR + [f"output_dir={out}", f"data.train.root={root}", f"data.test.root={root}",
                                 f"data.train.names={root}/classes.txt", f"data.test.names={root}/classes.txt",
                                 "test.score_thresh=0.0", "test.detections_per_img=20", "data.synthetic=''"]
    train_detector(load_detection_config(os.path.join(ROOT, "configs", "shapes_voc.yaml"), overrides))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_category"]) == {"circle", "square", "triangle", "star", "cross"}
    # The same number from the written files read back through the COCO form of their boxes.
    gt = read_voc_split(str(root), "shapes_val", f"{root}/classes.txt", False, "skip", "data.test").dataset
    ids = {image["voc_id"]: image["id"] for image in gt["images"]}
    records = []
    for category in gt["categories"]:
        for line in (out / "results" / "VOCshapes" / "Main" / f"comp4_det_val_{category['name']}.txt").open():
            voc_id, score, x1, y1, x2, y2 = line.split()
            x1, y1, x2, y2 = (float(v) - 1 for v in (x1, y1, x2, y2))
            records.append({"image_id": ids[voc_id], "category_id": category["id"], "score": float(score),
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    assert records
    expected = evaluate_voc(gt, records, "voc2010")["voc"]["mAP"]
    assert metrics["voc"]["mAP"] == pytest.approx(expected, abs=1e-3)
