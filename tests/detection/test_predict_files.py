"""tools/infer.py over files: folders searched recursively, videos frame by frame (and their annotated
copies), a progress bar, and predictions that tools/eval_det.py --det scores by file name."""

import importlib.util
import json
import os
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

from detection.config import load_detection_config
from detection.data.image_io import BadImageError
from detection.data.shapes import generate_split
from detection.evaluation.coco_eval import (
    DetectionsError,
    evaluate_detections,
    load_results_file,
    metrics_for_json,
)
from detection.evaluation.evaluator import score_files
from detection.modeling.build import build_model
from detection.predict_files import infer_files
from detection.predictor import Predictor
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR

# A random detector keeps all its proposals, so every image gets detections.
CONFIG = TINY_DETECTOR + ["model.arch=fpn", "test.score_thresh=0", "test.detections_per_img=5"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg, 3, backbone_weights=False)
    path = tmp_path_factory.mktemp("weights") / "model_final.pth"
    torch.save({"model": model.state_dict(),
                "meta": {"num_classes": 3, "category_ids": [1, 2, 3], "class_names": ["a", "b", "c"]}}, path)
    return cfg, str(path)


def write_image(path, height=40, width=50, seed=0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return str(path)


def write_video(path, frames=3, height=64, width=80) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (width, height))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    writer.release()
    return str(path)


def decoded_frames(path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    capture.release()
    return frames


def test_folders_are_searched_recursively_and_other_files_left_alone(detector, tmp_path):
    cfg, weights = detector
    images = tmp_path / "images"
    found = [write_image(images / "a.png"), write_image(images / "sub" / "b.jpg", seed=1),
             write_image(images / "sub" / "deeper" / "c.png", seed=2)]
    (images / "notes.txt").write_text("not an image")
    (images / "sub" / "labels.json").write_text("{}")
    predictions = infer_files(cfg, weights, [str(images)], str(tmp_path / "out"), vis_thresh=0, device="cpu",
                              progress=False)
    assert sorted({p["file_name"] for p in predictions}) == sorted(found)
    drawn = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "out" / "vis")
                   for d, _, fs in os.walk(tmp_path / "out" / "vis") for f in fs)
    assert drawn == ["a.png", "sub/b.jpg", "sub/deeper/c.png"]


def test_an_output_folder_inside_the_inputs_is_not_read_as_input(detector, tmp_path):
    """A second run with --out inside the photo folder would detect in its own annotated copies."""
    cfg, weights = detector
    images = tmp_path / "images"
    found = [write_image(images / "a.png"), write_image(images / "b.png", seed=1)]
    for _ in range(2):
        predictions = infer_files(cfg, weights, [str(images)], str(images / "out"), vis_thresh=0, device="cpu",
                                  progress=False)
        assert sorted({p["file_name"] for p in predictions}) == sorted(found)
    assert sorted(os.listdir(images / "out" / "vis")) == ["a.png", "b.png"]


def test_video_frames_are_detected_and_drawn_with_progress(detector, tmp_path, capsys):
    cfg, weights = detector
    video = write_video(tmp_path / "in" / "clip.mp4")
    image = write_image(tmp_path / "in" / "still.png")
    predictions = infer_files(cfg, weights, [str(tmp_path / "in")], str(tmp_path / "out"), vis_thresh=0,
                              device="cpu")
    assert "inference: 100%" in capsys.readouterr().err
    frames = decoded_frames(video)
    assert len(frames) == 3
    predictor = Predictor(cfg, weights, device="cpu")
    for index, frame in enumerate(frames):
        mine = [p for p in predictions if p["file_name"] == video and p["frame"] == index]
        expected = predictor(frame, format="BGR")
        assert len(mine) == len(expected["boxes"]) == 5
        boxes = expected["boxes"].copy()
        boxes[:, 2:] -= boxes[:, :2]
        np.testing.assert_allclose([p["bbox"] for p in mine], boxes, atol=0.006)
        np.testing.assert_allclose([p["score"] for p in mine], expected["scores"], atol=6e-6)
        assert [p["category_name"] for p in mine] == expected["class_names"]
    assert {p["file_name"] for p in predictions if "frame" not in p} == {image}
    drawn = decoded_frames(tmp_path / "out" / "vis" / "clip.mp4")
    assert len(drawn) == 3 and drawn[0].shape == (64, 80, 3)
    assert np.abs(drawn[0].astype(int) - frames[0]).mean() > 1  # boxes drawn on it
    assert (tmp_path / "out" / "vis" / "still.png").is_file()


def test_unreadable_video_is_skipped_with_one_warning(detector, tmp_path):
    cfg, weights = detector
    broken = tmp_path / "in" / "broken.mp4"
    image = write_image(tmp_path / "in" / "still.png")
    broken.write_bytes(np.random.default_rng(0).bytes(2000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = infer_files(cfg, weights, [str(tmp_path / "in")], str(tmp_path / "out"), vis_thresh=None,
                                  device="cpu", progress=False)
    assert [str(w.message) for w in caught] == [
        f"skipping: cannot read video: {broken} (a damaged file, or a format the OpenCV of this machine cannot "
        f"decode: convert it to MP4 or extract its frames as images)",
        f"1 of 2 files were skipped (unreadable, or too thin to detect in), e.g. {broken}"]
    assert {p["file_name"] for p in predictions} == {image}
    # Nothing read at all is an error, not an empty predictions.json that reads as "nothing detected".
    with pytest.raises(BadImageError, match=r"none of the 1 input files could be read \(e.g. .*broken.mp4\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            infer_files(cfg, weights, [str(broken)], str(tmp_path / "out2"), vis_thresh=None, device="cpu",
                        progress=False)


class NoEncoder:
    """cv2.VideoWriter of an OpenCV built without the encoder."""

    def __init__(self, *args):
        pass

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return False

    def release(self):
        pass


def test_a_missing_video_encoder_is_one_line(detector, tmp_path, monkeypatch):
    cfg, weights = detector
    video = write_video(tmp_path / "in" / "clip.avi")
    monkeypatch.setattr(cv2, "VideoWriter", NoEncoder)
    with pytest.raises(UserError) as error:
        infer_files(cfg, weights, [video], str(tmp_path / "out"), device="cpu", progress=False)
    assert str(error.value) == (f"cannot write the annotated video {tmp_path / 'out' / 'vis' / 'clip.avi.mp4'}: the "
                                f"OpenCV of this machine has no mp4v encoder (pass --no-vis to write "
                                f"predictions.json only)")
    predictions = infer_files(cfg, weights, [video], str(tmp_path / "out2"), vis_thresh=None, device="cpu",
                              progress=False)
    assert sorted({p["frame"] for p in predictions}) == [0, 1, 2]


def run_tool(name, monkeypatch, *args) -> int:
    """tools/NAME.py's main() in this process, as the command line ``python tools/NAME.py ARGS`` runs it."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    return module.main()


def test_infer_predictions_are_scored_by_eval_det(detector, tmp_path, monkeypatch, capsys):
    """infer.py's predictions.json keyed by file paths is scored as the same records with the json's image
    ids put in by hand."""
    _, weights = detector
    generate_split(str(tmp_path / "data"), "val", 3, seed=4)
    gt = str(tmp_path / "data" / "annotations" / "instances_val.json")
    assert run_tool("infer", monkeypatch, "--weights", weights, "--inputs", str(tmp_path / "data" / "val"),
                    "--out", str(tmp_path / "infer"), "--no-vis", "--device", "cpu", *CONFIG) == 0
    assert "inference: 100%" in capsys.readouterr().err
    assert run_tool("eval_det", monkeypatch, "--gt", gt, "--det", str(tmp_path / "infer" / "predictions.json"),
                    "--out", str(tmp_path / "scores")) == 0
    scored = json.loads((tmp_path / "scores" / "metrics.json").read_text())

    dataset = json.loads(open(gt, encoding="utf-8").read())
    ids = {image["file_name"]: image["id"] for image in dataset["images"]}
    records = json.loads((tmp_path / "infer" / "predictions.json").read_text())
    assert len(records) == 15
    by_hand = [{"image_id": ids[os.path.basename(r["file_name"])], "category_id": r["category_id"],
                "bbox": r["bbox"], "score": r["score"]} for r in records]
    matched = load_results_file(str(tmp_path / "infer" / "predictions.json"), dataset["images"])
    assert [r["image_id"] for r in matched] == [r["image_id"] for r in by_hand]
    assert len({r["image_id"] for r in by_hand}) == 3
    expected = metrics_for_json(evaluate_detections(dataset, by_hand))["bbox"]  # undefined ones as null
    assert scored["bbox"] == {name: (value if value is None else pytest.approx(value, abs=1e-9))
                              for name, value in expected.items()}


def coco_json(path, file_names) -> dict:
    data = {"images": [{"id": 10 + i, "file_name": name, "width": 100, "height": 80} for i, name in
                       enumerate(file_names)],
            "annotations": [{"id": 1 + i, "image_id": 10 + i, "category_id": 1, "bbox": [10, 10, 30 + i, 20],
                             "area": 600, "iscrowd": 0} for i in range(len(file_names))],
            "categories": [{"id": 1, "name": "thing"}]}
    path.write_text(json.dumps(data))
    return data


def test_file_names_match_the_longest_ending_of_the_path(tmp_path):
    """Perfect detections keyed by absolute paths score AP 100 only if each finds its own image: "a/x.png"
    and "x.png" are different images."""
    data = coco_json(tmp_path / "gt.json", ["x.png", "a/x.png", "b/y.png"])
    folder = "/data/set/images"
    paths = [f"{folder}/x.png", f"{folder}/a/x.png", "C:\\data\\b\\y.png"]
    det = [{"file_name": path, "category_id": 1, "bbox": ann["bbox"], "score": 0.9}
           for path, ann in zip(paths, data["annotations"])]
    (tmp_path / "det.json").write_text(json.dumps(det))
    assert [r["image_id"] for r in load_results_file(str(tmp_path / "det.json"), data["images"])] == [10, 11, 12]
    metrics = score_files(str(tmp_path / "gt.json"), str(tmp_path / "det.json"), str(tmp_path / "out"))
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("names, record, message", [
    (["x.png"], {"file_name": "/d/z.png"}, r"detection #0 is for /d/z.png, whose path ends in no file_name of the "
                                           r"ground truth's images"),
    (["x.png", "x.png"], {"file_name": "/d/x.png"}, r"detection #0 is for /d/x.png, which 2 images of the ground "
                                                    r"truth share as file_name \(ids \[10, 11\]\): give image_id"),
    (["x.mp4"], {"file_name": "x.mp4", "frame": 3}, r"detection #0 is on frame 3 of the video x.mp4: COCO scoring "
                                                    r"takes detections on images"),
    (["x.png"], {}, r"detection #0 lacks image_id \(or file_name\)"),
])
def test_file_names_that_do_not_match_are_one_line(tmp_path, names, record, message):
    data = coco_json(tmp_path / "gt.json", names)
    (tmp_path / "det.json").write_text(json.dumps([{**record, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                     "score": 0.5}]))
    with pytest.raises(DetectionsError, match=f"^{tmp_path / 'det.json'}: {message}"):
        load_results_file(str(tmp_path / "det.json"), data["images"])


def test_predictions_of_a_photo_turned_upright_are_refused_against_its_stored_pixels(detector, tmp_path):
    """A JPEG stored as 40 x 60 (height x width) with EXIF orientation 6; its json annotates the stored pixels,
    as COCO does. infer.py reads photos upright (60 x 40): scored by file name, its boxes were matched in the
    other frame (AP 0, no warning). --stored-pixels detects in the json's frame."""
    from PIL import Image
    cfg, weights = detector
    pixels = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    gt_images = [{"id": 7, "file_name": "photo.jpg", "width": 60, "height": 40}]
    upright = infer_files(cfg, weights, [str(tmp_path / "photo.jpg")], str(tmp_path / "up"), vis_thresh=None,
                          device="cpu", progress=False)
    assert {(r["width"], r["height"]) for r in upright} == {(40, 60)}
    with pytest.raises(DetectionsError, match=r"detected in 40x60 pixels, and the ground truth annotates 60x40 "
                                              r"\(turned by its EXIF orientation: .*run it with --stored-pixels\)"):
        load_results_file(str(tmp_path / "up" / "predictions.json"), gt_images)
    stored = infer_files(cfg, weights, [str(tmp_path / "photo.jpg")], str(tmp_path / "stored"), vis_thresh=None,
                         device="cpu", progress=False, upright=False)
    assert {(r["width"], r["height"]) for r in stored} == {(60, 40)}
    assert {r["image_id"] for r in load_results_file(str(tmp_path / "stored" / "predictions.json"), gt_images)} == {7}


def photo_with_orientation(path, orientation, height=40, width=60) -> str:
    """An image file whose EXIF orientation tag is ``orientation``, of stored pixels ``height`` x ``width``."""
    from PIL import Image
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return str(path)


@pytest.mark.parametrize("orientation, name, turn", [(2, "photo.jpg", "mirrored left to right"),
                                                     (3, "photo.jpg", "turned 180 degrees"),
                                                     (3, "photo.png", "turned 180 degrees"),
                                                     (4, "photo.webp", "mirrored top to bottom")])
def test_predictions_of_a_photo_mirrored_or_turned_180_degrees_upright_are_refused(detector, tmp_path, orientation,
                                                                                   name, turn):
    """Read upright, such a photo keeps its stored width and height, so its boxes, in the mirrored or turned
    frame, passed the size check and were scored against the stored pixels' objects without a word. The
    predictions record the orientation that was applied; --stored-pixels applies none."""
    from detection.data.image_io import read_image
    cfg, weights = detector
    path = photo_with_orientation(tmp_path / name, orientation)
    assert not np.array_equal(read_image(path, apply_exif_orientation=True), read_image(path))  # it is applied
    gt_images = [{"id": 7, "file_name": name, "width": 60, "height": 40}]
    upright = infer_files(cfg, weights, [path], str(tmp_path / "up"), vis_thresh=None, device="cpu", progress=False)
    assert {(r["width"], r["height"], r["exif_orientation"]) for r in upright} == {(60, 40, orientation)}
    with pytest.raises(DetectionsError) as caught:
        load_results_file(str(tmp_path / "up" / "predictions.json"), gt_images)
    assert str(caught.value) == (
        f"{tmp_path / 'up' / 'predictions.json'}: detection #0 is for {path}, detected in its pixels {turn} (EXIF "
        f"orientation {orientation}: tools/infer.py reads photos upright, and COCO annotates the stored pixels; run "
        f"it with --stored-pixels): its boxes would be scored in another frame")
    stored = infer_files(cfg, weights, [path], str(tmp_path / "stored"), vis_thresh=None, device="cpu",
                         progress=False, upright=False)
    assert {(r["width"], r["height"], r["exif_orientation"]) for r in stored} == {(60, 40, 1)}
    assert {r["image_id"] for r in load_results_file(str(tmp_path / "stored" / "predictions.json"), gt_images)} == {7}


@pytest.mark.parametrize("record, gt_size, refused", [
    ({"width": 60, "height": 40}, (60, 40), False),  # a file of before the orientation was recorded
    ({"width": 60, "height": 40, "exif_orientation": 1}, (60, 40), False),
    ({"width": 60, "height": 40, "exif_orientation": 3}, (60, 40), True),
    ({"width": 50, "height": 50, "exif_orientation": 6}, (50, 50), True),  # square: the size cannot tell
    # Only the upright photo has the json's size: annotated as a viewer shows it, and read so by the test sets.
    ({"width": 40, "height": 60, "exif_orientation": 6}, (40, 60), False),
    ({"exif_orientation": 8}, (60, 40), True),
    ({"width": 60, "height": 40, "exif_orientation": 2}, (None, None), True),
])
def test_the_recorded_orientation_decides_the_frame_when_the_sizes_agree(tmp_path, record, gt_size, refused):
    gt_images = [{"id": 7, "file_name": "photo.jpg", "width": gt_size[0], "height": gt_size[1]}]
    (tmp_path / "det.json").write_text(json.dumps([{"file_name": "/d/photo.jpg", **record, "category_id": 1,
                                                    "bbox": [1, 2, 3, 4], "score": 0.5}]))
    if refused:
        with pytest.raises(DetectionsError, match=rf"detection #0 is for /d/photo.jpg, detected in its pixels .* "
                                                  rf"\(EXIF orientation {record['exif_orientation']}: .*--stored-pixels"):
            load_results_file(str(tmp_path / "det.json"), gt_images)
    else:
        assert [r["image_id"] for r in load_results_file(str(tmp_path / "det.json"), gt_images)] == [7]
