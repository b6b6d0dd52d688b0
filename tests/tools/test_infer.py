"""tools/infer.py and detection/infer.py: thin images, same names in different folders, stopped runs, bad --out."""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from detection.config import load_detection_config
from detection.modeling.build import build_model
from detection.predict_files import infer_files
from detection.predictor import DegenerateImageError, Predictor
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, subprocess_env

# A random detector keeps all its proposals, so every image gets detections.
CONFIG = TINY_DETECTOR + ["model.arch=fpn", "test.score_thresh=0", "test.detections_per_img=5"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A randomly initialised tiny detector saved as tools/train_det.py saves one, and its config."""
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg, 3, backbone_weights=False)
    path = tmp_path_factory.mktemp("weights") / "model_final.pth"
    torch.save({"model": model.state_dict(),
                "meta": {"num_classes": 3, "category_ids": [1, 2, 3], "class_names": ["a", "b", "c"]}}, path)
    return cfg, str(path)


def write_image(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return str(path)


def test_thin_image_is_skipped_and_same_names_keep_their_folders(detector, tmp_path):
    cfg, weights = detector
    images = tmp_path / "images"
    for seed, name in enumerate(["a/x.png", "a/y.png", "b/x.png", "b/y.png"]):
        write_image(images / name, 40, 50, seed)
    write_image(images / "a" / "thin.png", 1, 5000)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = infer_files(cfg, weights, [str(images / "a"), str(images / "b")], str(out), vis_thresh=0)
    messages = [str(w.message) for w in caught]
    assert any("too thin" in m and m.endswith("a/thin.png") for m in messages), messages
    assert f"1 of 5 images were skipped (unreadable, or too thin to detect in), e.g. {images / 'a' / 'thin.png'}" \
        in messages
    # Every readable image has its own annotated copy: b/x.png does not replace a/x.png.
    drawn = sorted(os.path.relpath(os.path.join(d, f), out / "vis") for d, _, fs in os.walk(out / "vis") for f in fs)
    assert drawn == ["a/x.png", "a/y.png", "b/x.png", "b/y.png"]
    assert not np.array_equal(cv2.imread(str(out / "vis" / "a" / "x.png")), cv2.imread(str(out / "vis" / "b" / "x.png")))
    # The file holds what the predictor gives for each image, boxes as x, y, w, h.
    written = json.loads((out / "predictions.json").read_text())
    assert written == predictions and len(written) == 4 * 5
    path = str(images / "b" / "y.png")
    image, expected = Predictor(cfg, weights).predict_file(path)
    mine = [p for p in written if p["file_name"] == path]
    boxes = np.array([p["bbox"] for p in mine])
    reference = expected["boxes"].copy()
    reference[:, 2:] -= reference[:, :2]
    np.testing.assert_allclose(boxes, reference, atol=0.006)
    np.testing.assert_allclose([p["score"] for p in mine], expected["scores"], atol=6e-6)


def test_thin_limit_is_where_the_resized_side_rounds_to_zero(detector):
    cfg, weights = detector
    predictor = Predictor(cfg, weights)
    # min_size_test=160, max_size_test=240: a 5000-pixel side scales by 240/5000 = 0.048, so a 10-pixel
    # side becomes 0.48 pixel (rounds to 0) and an 11-pixel side 0.528 pixel (rounds to 1).
    with pytest.raises(DegenerateImageError, match="5000x10 pixels is too thin"):
        predictor(np.zeros((10, 5000, 3), np.uint8))
    detections = predictor(np.zeros((11, 5000, 3), np.uint8))
    assert detections["boxes"].shape[1] == 4
    assert np.all(detections["boxes"][:, [1, 3]] <= 11) and np.all(detections["boxes"][:, [0, 2]] <= 5000)


def test_the_thin_limit_of_the_papers_multiscale_counts_its_rpn_scale(detector):
    """test.scales=[320, 400] in paper mode also resizes to input.min_size_test (160) for the proposals: an
    image fine at 320 but too thin at 160 ended in an OpenCV assertion (and the whole infer.py run)."""
    cfg, weights = detector
    predictor = Predictor(OmegaConf.merge(cfg, {"test": {"scales": [320, 400], "multiscale_mode": "paper"}}), weights)
    # At 160 the cap is 240: a 10-pixel side of a 5000-pixel image becomes 0.48 pixel (0.96 at 320).
    with pytest.raises(DegenerateImageError, match="5000x10 pixels is too thin"):
        predictor(np.zeros((10, 5000, 3), np.uint8))


def test_predictions_made_before_a_stop_are_on_disk(detector, tmp_path, monkeypatch):
    cfg, weights = detector
    for index in range(4):
        write_image(tmp_path / "images" / f"{index}.png", 40, 50, index)
    calls = []
    original = Predictor.predict_file

    def stop_at_third(self, path, upright=True):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("SIGTERM")
        return original(self, path, upright)

    monkeypatch.setattr(Predictor, "predict_file", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        infer_files(cfg, weights, [str(tmp_path / "images")], str(tmp_path / "out"), vis_thresh=None)
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted({p["file_name"] for p in written}) == calls[:2] and len(written) == 2 * 5


def run_tool(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), *args], capture_output=True,
                          text=True, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), timeout=300)


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("")
    result = run_tool("infer.py", "--weights", "w.pth", "--inputs", "x.png", "--out", str(tmp_path / "taken"))
    assert result.returncode == 2
    assert result.stderr == (f"error: --out {tmp_path / 'taken'} is a file, not a folder: give a folder for the "
                             f"outputs\n")


def test_overrides_after_the_inputs_reach_the_config(detector, tmp_path, monkeypatch):
    _, weights = detector
    image = write_image(tmp_path / "x.png", 40, 50)
    # A key CONFIG does not set: an override of CONFIG's own keys, later on the line, would win over it.
    monkeypatch.setattr(sys, "argv", ["infer.py", "--weights", weights, "--inputs", image, "test.nms_thresh=2",
                                      "--out", str(tmp_path / "out"), *CONFIG])
    with pytest.raises(ConfigError, match=r"^test.nms_thresh=2 must be a number in \[0, 1\]$"):
        load_tool("infer").main()
    monkeypatch.setattr(sys, "argv", ["infer.py", "--weights", weights, "--inputs", image, *CONFIG,
                                      "--out", str(tmp_path / "out"), "--no-vis", "--device", "cpu"])
    assert load_tool("infer").main() == 0
    assert {p["file_name"] for p in json.loads((tmp_path / "out" / "predictions.json").read_text())} == {image}


def test_export_out_that_is_a_folder_or_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_tool("export.py", "--weights", "w.pth", "--format", "onnx", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == (f"error: --out {tmp_path} is a folder: give the file to write, such as "
                             f"{tmp_path / 'model.onnx'}\n")
    result = run_tool("export.py", "--weights", "w.pth", "--format", "torchscript",
                      "--out", str(tmp_path / "file" / "m.pt"))
    assert result.returncode == 2
    assert result.stderr == (f"error: --out {tmp_path / 'file' / 'm.pt'}: {tmp_path / 'file'} is a file, so no "
                             f"folder can be made there\n")


def infer_argv(weights, image, out, *extra):
    return ["infer.py", "--weights", weights, "--inputs", image, "--out", str(out), "--vis-thresh", "0", "--device",
            "cpu", "--no-progress", *CONFIG, *extra]


def test_a_rerun_into_the_out_of_an_earlier_run_is_refused_unless_overwrite(detector, tmp_path, monkeypatch):
    _, weights = detector
    first, second = write_image(tmp_path / "in" / "a.png", 40, 50, 1), write_image(tmp_path / "in" / "b.png", 40, 50, 2)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", infer_argv(weights, first, out))
    assert load_tool("infer").main() == 0
    earlier = (out / "predictions.json").read_bytes()
    monkeypatch.setattr(sys, "argv", infer_argv(weights, second, out))
    with pytest.raises(UserError) as refused:
        load_tool("infer").main()
    assert str(refused.value) == (f"--out {out} holds an earlier run's predictions.json and vis/: give another --out, "
                                  f"or pass --overwrite to replace that run")
    assert (out / "predictions.json").read_bytes() == earlier and os.listdir(out / "vis") == ["a.png"]
    # --overwrite replaces the run: its annotated images too, not only predictions.json.
    monkeypatch.setattr(sys, "argv", infer_argv(weights, second, out, "--overwrite"))
    assert load_tool("infer").main() == 0
    assert {p["file_name"] for p in json.loads((out / "predictions.json").read_text())} == {second}
    assert sorted(os.listdir(out)) == ["predictions.json", "vis"] and os.listdir(out / "vis") == ["b.png"]
    # Without annotated images, the earlier run's are cleared all the same.
    monkeypatch.setattr(sys, "argv", infer_argv(weights, first, out, "--overwrite", "--no-vis"))
    assert load_tool("infer").main() == 0
    assert os.listdir(out) == ["predictions.json"]


def test_a_run_that_reads_no_file_leaves_the_earlier_run_as_it_was(detector, tmp_path, monkeypatch):
    cfg, weights = detector
    good = write_image(tmp_path / "in" / "a.png", 40, 50)
    junk = tmp_path / "in" / "junk.jpg"
    junk.write_bytes(b"not an image")
    out = tmp_path / "out"
    infer_files(cfg, weights, [good], str(out), vis_thresh=0, device="cpu", progress=False)
    earlier = (out / "predictions.json").read_bytes()
    with pytest.raises(UserError, match="none of the 1 input files could be read"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infer_files(cfg, weights, [str(junk)], str(out), vis_thresh=0, device="cpu", progress=False)
    assert (out / "predictions.json").read_bytes() == earlier and len(json.loads(earlier)) == 5
    assert sorted(os.listdir(out)) == ["predictions.json", "vis"] and os.listdir(out / "vis") == ["a.png"]

    def stop_at_once(self, path, upright=True):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(Predictor, "predict_file", stop_at_once)
    with pytest.raises(KeyboardInterrupt):
        infer_files(cfg, weights, [good], str(out), vis_thresh=0, device="cpu", progress=False)
    assert (out / "predictions.json").read_bytes() == earlier
    assert sorted(os.listdir(out)) == ["predictions.json", "vis"] and os.listdir(out / "vis") == ["a.png"]
