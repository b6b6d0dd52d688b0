"""docs/CUSTOM_DATA.md runs as written: its commands, in order, on a tiny dataset of its json's categories,
a second set of its second json's categories and a YOLO copy of the first (tiny model sizes and 4
iterations added to the training commands), then its Python example and its config of several sets."""

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from detection.config import load_detection_config
from detection.data.loader import build_train_dataset
from detection.data.shapes import CLASSES, render_image
from detection.modeling.build import build_model
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, coco_as_yolo

DOC = os.path.join(ROOT, "docs", "CUSTOM_DATA.md")
# Commands of the walkthrough this test does not run (matched by a part of the command), and why.
NOT_RUN = {
    "make demo": "the fixture saves a tiny detector of the shapes classes as output/shapes/model_final.pth",
    "tv_r50_fpn.pth": "needs torchvision's COCO file; tests/detection/test_fine_tune.py converts a random "
                      "torchvision R50-FPN and fine-tunes it into a config of 5 classes",
}


def doc_text() -> str:
    with open(DOC, encoding="utf-8") as handle:
        return handle.read()


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", doc_text(), flags=re.S)


def doc_commands() -> list[str]:
    """The bash blocks' commands, continuation lines joined."""
    lines = []
    for block in blocks("bash"):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def write_split(root, split: str, count: int, categories: list[dict], seed: int) -> None:
    """Shapes images labelled with the doc's categories: a shape of the same name, or for a category that
    is no shape, the first shape of no category; objects of other shapes stay unlabelled."""
    names = [c["name"] for c in categories]
    spare = iter(name for name in CLASSES if name not in names)
    ids = {(c["name"] if c["name"] in CLASSES else next(spare)): c["id"] for c in categories}
    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, annotations, index = [], [], 0
    rng = np.random.default_rng(seed)
    while len(images) < count:
        image, objects = render_image(rng)
        objects = [o for o in objects if CLASSES[o["category"]] in ids]
        if not objects:
            continue
        sy, sx = 120 / image.shape[0], 160 / image.shape[1]
        name = f"{index:04d}.jpg"
        cv2.imwrite(os.path.join(root, split, name), cv2.cvtColor(cv2.resize(image, (160, 120)), cv2.COLOR_RGB2BGR))
        images.append({"id": index + 1, "file_name": name, "width": 160, "height": 120})
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0,
                                "category_id": ids[CLASSES[obj["category"]]], "bbox": [x * sx, y * sy, w * sx, h * sy],
                                "area": w * sx * h * sy})
        index += 1
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"{split}.json"), "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)


def run_tool(args: list[str], monkeypatch) -> int:
    """``python tools/NAME.py ARGS`` as the tool's main() in this process."""
    assert args[0] == "python" and args[1].startswith("tools/"), args
    name = os.path.basename(args[1])[:-3]
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, args[1]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    extra = TINY_DETECTOR if name == "train_det" else []
    monkeypatch.setattr(sys, "argv", [args[1], *args[2:], *extra])
    return module.main()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The doc's dataset (its json's categories) and, for `make demo`, a tiny detector of the shapes
    classes saved as the trainer saves one."""
    monkeypatch.chdir(tmp_path)
    categories = json.loads(blocks("json")[0])["categories"]
    assert [c["id"] for c in categories] == [3, 7, 12]  # ids with gaps, as the doc says
    write_split("datasets/pets", "train", 4, categories, seed=0)
    write_split("datasets/pets", "val", 2, categories, seed=1)
    write_split("datasets/more_pets", "train", 4, json.loads(blocks("json")[1])["categories"], seed=2)
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    for split in ("train", "val"):
        coco_as_yolo(f"datasets/pets/annotations/{split}.json", f"datasets/pets/{split}", "datasets/pets_yolo", split,
                     names)
    with open("datasets/pets_yolo/data.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump({"names": names}, handle)
    torch.manual_seed(0)
    demo = build_model(load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), TINY_DETECTOR),
                       len(CLASSES), backbone_weights=False)
    os.makedirs("output/shapes")
    torch.save({"model": demo.state_dict(), "meta": {"num_classes": len(CLASSES), "category_ids": [1, 2, 3, 4, 5],
                                                     "class_names": list(CLASSES)}}, "output/shapes/model_final.pth")
    return categories


def test_the_walkthrough_runs_as_written(workspace, monkeypatch, caplog):
    ran, skipped = [], set()
    with caplog.at_level(logging.INFO, logger="detection.weights"), \
            caplog.at_level(logging.INFO, logger="detection.data.datasets"):
        for command in doc_commands():
            reason = [part for part in NOT_RUN if part in command]
            if reason:
                skipped.update(reason)
                continue
            assert run_tool(shlex.split(command, comments=True), monkeypatch) == 0, command
            ran.append(command)
    assert skipped == set(NOT_RUN) and len(ran) == 7

    # Fine-tuning said what it re-initialized and kept, in the words the doc shows.
    shown = [line for line in doc_text().splitlines() if line.startswith("output/shapes/model_final.pth: ")]
    assert [r.getMessage() for r in caplog.records if r.name == "detection.weights"] == shown
    checkpoint = torch.load("output/pets/model_final.pth", weights_only=False)
    assert checkpoint["meta"]["category_ids"] == [3, 7, 12]
    assert checkpoint["meta"]["class_names"] == ["circle", "square", "ring"]
    metrics = json.loads(open("output/pets/eval/metrics.json", encoding="utf-8").read())
    assert set(metrics["per_category"]) == {"circle", "square", "ring"}
    predictions = json.loads(open("output/pets/infer/predictions.json", encoding="utf-8").read())
    assert predictions and {p["category_id"] for p in predictions} <= {3, 7, 12}
    assert {os.path.basename(p["file_name"]) for p in predictions} <= {"0000.jpg", "0001.jpg"}
    scored = json.loads(open("output/pets/infer/metrics.json", encoding="utf-8").read())
    assert set(scored["per_category"]) == {"circle", "square", "ring"}

    # Several sets: the second set's classes matched by name, its box renamed, its star added after.
    added = [line.strip() for line in doc_text().splitlines()
             if line.strip().startswith(("datasets/more_pets/annotations/train.json: ",
                                         "datasets/pets/annotations/val.json lacks "))]
    assert len(added) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "detection.data.datasets"] == added
    several = torch.load("output/pets_more/model_final.pth", weights_only=False)["meta"]
    assert several["category_ids"] == [3, 7, 12, 13]
    assert several["class_names"] == ["circle", "square", "ring", "star"]
    # The YOLO copy: class index i is category id i + 1, scored per class under the names of data.yaml.
    assert torch.load("output/pets_yolo/model_final.pth", weights_only=False)["meta"]["category_ids"] == [1, 2, 3]
    yolo_metrics = json.loads(open("output/pets_yolo/eval/metrics.json", encoding="utf-8").read())
    assert set(yolo_metrics["per_category"]) == {"circle", "square", "ring"} and yolo_metrics["num_images"] == 2
    # The config file of several sets, the YOLO one among them.
    (config_block,) = [block for block in blocks("yaml") if "train_extra" in block]
    with open("several.yaml", "w", encoding="utf-8") as handle:
        handle.write(f"_base_: {os.path.join(ROOT, 'configs', 'shapes.yaml')}\n{config_block}")
    dataset = build_train_dataset(load_detection_config("several.yaml", ["data.synthetic=''"]))
    assert dataset.category_map.names == ["circle", "square", "ring", "star"]
    assert [len(part) for part in dataset.parts] == [4, 4, 4]

    # The Python example, on the fine-tuned detector.
    (example,) = blocks("python")
    printed = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(example, DOC, "exec"), namespace)
    assert len(printed.getvalue().splitlines()) == len(namespace["detections"]["boxes"])
    assert len(namespace["batch"]) == 2
    np.testing.assert_allclose(namespace["batch"][1]["boxes"], namespace["detections"]["boxes"], atol=1e-3)
