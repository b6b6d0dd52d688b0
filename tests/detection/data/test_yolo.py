"""YOLO-format labels: COCO boxes written as YOLO text and read back, the names files, bad lines under
data.on_bad_image, the EXIF orientation, the COCO evaluation of a YOLO split, and training on one."""

import json
import os
import warnings

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps

from detection.config import load_detection_config
from detection.data.coco import CategoryMap, load_coco
from detection.data.image_io import BadImageError
from detection.data.loader import build_test_dataset, build_train_dataset
from detection.data.yolo import LabelLineError, read_names, yolo_to_coco
from detection.evaluation.coco_eval import score_test_set
from detection.training import train_detector
from resnet_engine.config import ConfigError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, coco_as_yolo, data_overrides

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")
# Category ids with gaps and out of order, as a COCO json may give them.
CATEGORIES = [{"id": 9, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 4, "name": "bird"}]
NAMES = ["cat", "bird", "dog"]  # YOLO class index = position in the names, in the order of the ids


def write_coco(root, images: list[tuple[str, int, int]], boxes: dict[str, list[tuple[int, list]]]) -> str:
    """A COCO json of grey images (file name, width, height) and their boxes (category id, [x, y, w, h])."""
    os.makedirs(root / "coco_images", exist_ok=True)
    infos, annotations = [], []
    for image_id, (name, width, height) in enumerate(images, start=1):
        cv2.imwrite(str(root / "coco_images" / name), np.full((height, width, 3), 100, np.uint8))
        infos.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category_id, (x, y, w, h) in boxes.get(name, []):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": infos, "annotations": annotations, "categories": CATEGORIES}))
    return str(path)


def boxes_by_file(data: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """{file name: sorted (category name, [x, y, w, h])} of a COCO dict."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {image["id"]: image["file_name"] for image in data["images"]}
    table = {name: [] for name in files.values()}
    for ann in data["annotations"]:
        table[files[ann["image_id"]]].append((names[ann["category_id"]], [float(v) for v in ann["bbox"]]))
    return {name: sorted(boxes) for name, boxes in table.items()}


@pytest.fixture
def coco_and_yolo(tmp_path):
    """The same three images as a COCO json and as a YOLO split "val" (names in classes.txt); the
    second image has no boxes and so no label file."""
    ann_file = write_coco(tmp_path, [("a.png", 64, 48), ("b.png", 30, 50), ("c.png", 100, 40)], {
        "a.png": [(9, [3.25, 4.5, 20.0, 17.75]), (2, [40.0, 10.0, 23.5, 30.0])],
        "c.png": [(4, [0.0, 0.0, 100.0, 40.0]), (9, [61.125, 12.0, 7.5, 9.25]), (2, [10.0, 30.0, 5.0, 10.0])],
    })
    yolo = tmp_path / "yolo"
    coco_as_yolo(ann_file, str(tmp_path / "coco_images"), yolo, "val", NAMES)
    (yolo / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return ann_file, str(tmp_path / "coco_images"), yolo


def test_coco_boxes_written_as_yolo_read_back_to_a_thousandth_of_a_pixel(coco_and_yolo):
    ann_file, _, yolo = coco_and_yolo
    converted = yolo_to_coco(str(yolo), "val", NAMES)
    original = json.loads(open(ann_file, encoding="utf-8").read())
    assert [c["name"] for c in converted["categories"]] == NAMES
    assert [c["id"] for c in converted["categories"]] == [1, 2, 3]  # class index + 1
    assert [(i["file_name"], i["width"], i["height"]) for i in converted["images"]] == [
        ("a.png", 64, 48), ("b.png", 30, 50), ("c.png", 100, 40)]
    read, expected = boxes_by_file(converted), boxes_by_file(original)
    assert read.keys() == expected.keys() and read["b.png"] == []
    for name in expected:
        assert [n for n, _ in read[name]] == [n for n, _ in expected[name]]
        np.testing.assert_allclose([b for _, b in read[name]], [b for _, b in expected[name]], atol=1e-3)
    for ann in converted["annotations"]:
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])


def test_names_files_as_ultralytics_and_darknet_write_them(tmp_path):
    (tmp_path / "list.yaml").write_text("path: .\ntrain: images/train\nnames: [cat, bird, dog]\n")
    (tmp_path / "dict.yaml").write_text("nc: 3\nnames:\n  0: cat\n  2: dog\n  1: bird\n")
    (tmp_path / "obj.names").write_text("cat\nbird\ndog\n\n")
    for name in ("list.yaml", "dict.yaml", "obj.names"):
        assert read_names(str(tmp_path / name)) == NAMES, name
    (tmp_path / "gap.yaml").write_text("names: {0: cat, 2: dog}\n")
    with pytest.raises(ConfigError, match=r"gap.yaml: no 'names' list: .*indices from 0, without gaps"):
        read_names(str(tmp_path / "gap.yaml"))
    (tmp_path / "nc.yaml").write_text("nc: 4\nnames: [cat, bird, dog]\n")
    with pytest.raises(ConfigError, match=r"nc.yaml: nc is 4 but 'names' has 3 entries"):
        read_names(str(tmp_path / "nc.yaml"))
    (tmp_path / "blank.txt").write_text("cat\n\ndog\n")
    with pytest.raises(ConfigError, match=r"blank.txt: line 2 is empty"):
        read_names(str(tmp_path / "blank.txt"))
    (tmp_path / "keys.yaml").write_text("names:\n  0: cat\n  1: bird\n  0: dog\n")
    with pytest.raises(ConfigError, match=r"keys.yaml: invalid YAML \('0' is given twice in one section \(lines 2 "
                                          r"and 4\): keep one\)"):
        read_names(str(tmp_path / "keys.yaml"))
    (tmp_path / "twice.txt").write_text("cat\nbird\ncat\n")
    with pytest.raises(ConfigError, match=r"twice.txt: class 2 is named 'cat', as class 0 is: give each class a name "
                                          r"of its own"):
        read_names(str(tmp_path / "twice.txt"))


def yolo_cfg(yolo, *extra):
    return load_detection_config(SHAPES_CFG, TINY_DETECTOR + [
        "data.synthetic=''", "data.train.format=yolo", f"data.train.root={yolo}", "data.train.split=val",
        "data.test.format=yolo", f"data.test.root={yolo}", "data.test.split=val", *extra])


def test_a_yolo_split_trains_with_the_labels_of_its_names(coco_and_yolo):
    _, _, yolo = coco_and_yolo
    dataset = build_train_dataset(yolo_cfg(yolo))
    assert dataset.category_map.names == NAMES and dataset.category_map.category_ids == [1, 2, 3]
    record = dataset.records[2]  # c.png: bird, dog, cat
    assert record["labels"].tolist() == [2, 3, 1]
    np.testing.assert_allclose(record["boxes"][1], [61.125, 12.0, 68.625, 21.25], atol=1e-3)  # xyxy
    sample = dataset[(2, 0)]
    assert sorted(sample["labels"].tolist()) == [1, 2, 3] and sample["image"].dtype == torch.uint8


def test_missing_folders_and_names_are_one_line_naming_the_key(coco_and_yolo, tmp_path):
    _, _, yolo = coco_and_yolo
    with pytest.raises(ConfigError, match=r"YOLO images folder not found: .*images/train \(set data.train.root to "
                                          r"the folder that holds images/ and labels/, and data.train.split"):
        build_train_dataset(yolo_cfg(yolo, "data.train.split=train"))
    os.remove(yolo / "classes.txt")
    with pytest.raises(ConfigError, match=r"no class names in .*yolo: none of data.yaml, classes.txt, obj.names is "
                                          r"there \(set data.train.names=/path/to/classes.txt\)"):
        build_train_dataset(yolo_cfg(yolo))
    with pytest.raises(ConfigError, match=r"YOLO names file not found: nope.txt \(set data.test.names="):
        build_test_dataset(yolo_cfg(yolo, "data.test.names=nope.txt"), CategoryMap.identity(3), resize=True)
    with pytest.raises(ConfigError, match=r"data.train.format=yolo needs data.train.root"):
        yolo_cfg(yolo, "data.train.root=''")
    with pytest.raises(ConfigError, match=r"data.test.root is a key of YOLO sets: add data.test.format=yolo"):
        yolo_cfg(yolo, "data.test.format=coco")


BAD_LINES = [
    ("0 0.5 0.5 0.2", "has 4 fields: give 'class x_center y_center width height'"),
    ("1 0.5 O.5 0.2 0.2", "'O.5' is not a number"),
    ("1.5 0.5 0.5 0.2 0.2", "class '1.5' is not an integer index"),
    ("3 0.5 0.5 0.2 0.2", "class 3 is not one of the 3 class names (0 to 2)"),
    ("0 0.5 0.5 32 24", "width 32 is outside [0, 1]: give coordinates divided by the image's width and height"),
    ("0 -0.2 0.5 0.1 0.1", "x_center -0.2 is outside [0, 1]: give coordinates divided by the image's width and height"),
]


@pytest.mark.parametrize("line, problem", BAD_LINES)
def test_a_malformed_line_skips_its_image_with_one_warning_or_fails(coco_and_yolo, line, problem):
    _, _, yolo = coco_and_yolo
    label = yolo / "labels" / "val" / "a.txt"
    label.write_text(label.read_text() + line + "\n")  # the third line
    with pytest.warns(UserWarning) as caught:
        data = yolo_to_coco(str(yolo), "val", NAMES)
    messages = [str(w.message) for w in caught]
    assert messages == [f"skipping {yolo}/images/val/a.png: {label}:3: {problem}"]
    assert [image["file_name"] for image in data["images"]] == ["b.png", "c.png"]
    assert len(data["annotations"]) == 3  # c.png's
    with pytest.raises(LabelLineError) as error:
        yolo_to_coco(str(yolo), "val", NAMES, on_bad_image="fail")
    assert str(error.value) == f"{label}:3: {problem} (set data.on_bad_image=skip to leave the image out)"


def test_small_rounding_outside_the_image_is_accepted_and_clipped(coco_and_yolo):
    _, _, yolo = coco_and_yolo
    (yolo / "labels" / "val" / "b.txt").write_text("2 0.5 0.5 1.004 0.5\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = yolo_to_coco(str(yolo), "val", NAMES)
    (ann,) = [a for a in data["annotations"] if a["image_id"] == 2]
    np.testing.assert_allclose(ann["bbox"], [-0.06, 12.5, 30.12, 25.0], atol=1e-9)
    with pytest.warns(UserWarning, match=r"labels/val: 0 boxes dropped .*, 1 clipped to the image"):
        dataset = build_train_dataset(yolo_cfg(yolo))
    np.testing.assert_allclose(dataset.records[1]["boxes"], [[0.0, 12.5, 30.0, 37.5]], atol=1e-4)


def test_label_files_without_images_are_named_and_images_without_labels_have_no_boxes(coco_and_yolo):
    _, _, yolo = coco_and_yolo
    (yolo / "labels" / "val" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (yolo / "labels" / "val" / "classes.txt").write_text("\n".join(NAMES))  # labelImg keeps its names here
    with pytest.warns(UserWarning) as caught:
        data = yolo_to_coco(str(yolo), "val", NAMES)
    assert [str(w.message) for w in caught] == [
        f"{yolo}/labels/val: 1 label files have no image in {yolo}/images/val and are ignored: gone.txt"]
    assert [a for a in data["annotations"] if a["image_id"] == 2] == []  # b.png: no label file
    assert len(data["images"]) == 3


def test_undecodable_images_are_left_out_with_a_warning_or_fail(coco_and_yolo):
    _, _, yolo = coco_and_yolo
    (yolo / "images" / "val" / "b.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipping .*b.png: cannot decode image: .*b.png$"):
        data = yolo_to_coco(str(yolo), "val", NAMES)
    assert [image["file_name"] for image in data["images"]] == ["a.png", "c.png"]
    with pytest.raises(BadImageError, match=r"cannot decode image: .*b.png \(set data.on_bad_image=skip"):
        yolo_to_coco(str(yolo), "val", NAMES, on_bad_image="fail")


def test_boxes_refer_to_the_upright_photo(tmp_path):
    """A JPEG stored 60 wide and 40 high with EXIF orientation 6 (rotate 90 degrees clockwise to view):
    YOLO's labels, and so the boxes, refer to the upright 40 x 60 image."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[5:15, 40:55] = 255  # a white patch near the top right of the stored pixels
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "labels")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "images" / "photo.jpg", exif=exif, quality=100)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "images" / "photo.jpg")))
    rows, cols = np.nonzero(upright[..., 0] > 128)
    x1, y1, x2, y2 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
    (tmp_path / "labels" / "photo.txt").write_text(
        f"0 {(x1 + x2) / 2 / 40} {(y1 + y2) / 2 / 60} {(x2 - x1) / 40} {(y2 - y1) / 60}\n")
    (tmp_path / "classes.txt").write_text("patch\n")
    cfg = load_detection_config(SHAPES_CFG, ["data.synthetic=''", "data.test.format=yolo", f"data.test.root={tmp_path}"])
    dataset = build_test_dataset(cfg, CategoryMap.identity(1), resize=False)
    assert (dataset.records[0]["width"], dataset.records[0]["height"]) == (40, 60)
    sample = dataset[0]
    assert sample["image"].shape == (3, 60, 40)
    box = dataset.records[0]["boxes"][0].round().astype(int)
    assert sample["image"][0, box[1]:box[3], box[0]:box[2]].float().mean() > 240  # the patch, upright


def jittered_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Detections made from a COCO dict's boxes: shifted, scored, some with the wrong category, plus
    false positives, keyed by file name so that the same set can be scored under other image ids."""
    rng = np.random.default_rng(seed)
    files = {image["id"]: image["file_name"] for image in gt["images"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    detections = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        name = names[ann["category_id"]] if rng.random() > 0.2 else "cat"
        detections.append({"file_name": files[ann["image_id"]], "name": name, "score": float(rng.random()),
                           "bbox": [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h), w, h]})
        detections.append({"file_name": files[ann["image_id"]], "name": name, "score": float(rng.random() / 2),
                           "bbox": [rng.uniform(0, 20), rng.uniform(0, 20), 8.0, 8.0]})
    return detections


def as_results(detections: list[dict], gt: dict) -> list[dict]:
    image_id = {image["file_name"]: image["id"] for image in gt["images"]}
    category_id = {c["name"]: c["id"] for c in gt["categories"]}
    return [{"image_id": image_id[d["file_name"]], "category_id": category_id[d["name"]], "bbox": d["bbox"],
             "score": d["score"]} for d in detections]


def test_a_yolo_test_split_scores_as_its_coco_json(coco_and_yolo):
    ann_file, img_dir, yolo = coco_and_yolo
    coco_cfg = load_detection_config(SHAPES_CFG, ["data.synthetic=''", f"data.test.ann_file={ann_file}",
                                                  f"data.test.img_dir={img_dir}"])
    coco_set = build_test_dataset(coco_cfg, CategoryMap.from_coco(load_coco(ann_file)), resize=True)
    yolo_set = build_test_dataset(yolo_cfg(yolo), CategoryMap.identity(3, NAMES), resize=True)
    detections = jittered_detections(coco_set.coco.dataset)
    scores = []
    for dataset in (coco_set, yolo_set):
        gt = dataset.coco.dataset
        scores.append(score_test_set(gt, [r["image_id"] for r in dataset.records], as_results(detections, gt), []))
    assert 5 < scores[0]["bbox"]["AP"] < 95, scores[0]["bbox"]  # a score that a wrong box or label would move
    for key, value in scores[0]["bbox"].items():
        assert scores[1]["bbox"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert scores[1]["per_category"] == pytest.approx(scores[0]["per_category"], abs=1e-6)


def test_training_on_a_yolo_copy_matches_training_on_the_json(fixed_shapes, tmp_path):
    """Two iterations on the shapes set as YOLO labels give the weights of two iterations on its json: the
    labels' six decimals move them by 2e-7 at most, where permuted class labels move them by 9e-5."""
    names = ["circle", "square", "triangle", "star", "cross"]
    for split in ("train", "val"):
        coco_as_yolo(f"{fixed_shapes}/annotations/instances_{split}.json", f"{fixed_shapes}/{split}",
                     tmp_path / "yolo", split, names)
    (tmp_path / "yolo" / "data.yaml").write_text(yaml.safe_dump({"names": dict(enumerate(names))}))
    common = TINY_DETECTOR + ["solver.max_iter=2", "solver.steps=[1]", "test.max_images=2",
                              "solver.checkpoint_period=0"]
    json_run = common + data_overrides(fixed_shapes) + [f"output_dir={tmp_path / 'json'}"]
    yolo_run = common + ["data.synthetic=''", f"output_dir={tmp_path / 'yolo_run'}"] + [
        f"data.{split}.{key}={value}" for split, name in (("train", "train"), ("test", "val"))
        for key, value in (("format", "yolo"), ("root", tmp_path / "yolo"), ("split", name))]
    json_metrics = train_detector(load_detection_config(SHAPES_CFG, json_run))
    yolo_metrics = train_detector(load_detection_config(SHAPES_CFG, yolo_run))
    weights = [torch.load(tmp_path / run / "model_final.pth", weights_only=False) for run in ("json", "yolo_run")]
    assert weights[1]["meta"]["class_names"] == names and weights[1]["meta"]["category_ids"] == [1, 2, 3, 4, 5]
    for key, value in weights[0]["model"].items():
        torch.testing.assert_close(weights[1]["model"][key], value, atol=1e-5, rtol=0, msg=key)
    assert yolo_metrics["num_images"] == json_metrics["num_images"] == 2
    assert yolo_metrics["bbox"]["AP"] == pytest.approx(json_metrics["bbox"]["AP"], abs=0.5)
