"""The Predictor takes what people hold as images: each kind gives the detections of the equivalent RGB
uint8 array, a list is one forward pass, boxes come back in the input's pixels, bad inputs get one line."""

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detection.config import load_detection_config
from detection.modeling.build import build_model
from detection.predictor import Predictor, choose_device
from resnet_engine.config import config_to_text
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.detection.tv_reference import shapes_image
from tests.helpers import TINY_DETECTOR

# Test scale 160 (shorter side), 240 (longer): a 160x224 image is at the test size, not resized.
CONFIG = TINY_DETECTOR + ["model.arch=fpn", "test.score_thresh=0.01", "test.detections_per_img=20"]
HEIGHT, WIDTH = 160, 224


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random tiny detector whose BatchNorm statistics were measured on a few shapes images (so that
    its detections depend on the image), saved to a file: (its config, the file)."""
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg, 3, backbone_weights=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batch
    images = [torch.from_numpy(shapes_image(50 + i, HEIGHT, WIDTH)).permute(2, 0, 1) for i in range(4)]
    with torch.no_grad():
        model.backbone.train()
        model.backbone(model.preprocess(images)[0])
    path = tmp_path_factory.mktemp("weights") / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": {"num_classes": 3, "category_ids": [4, 8, 15],
                                                      "class_names": ["circle", "square", "star"]}}, path)
    return cfg, path


@pytest.fixture(scope="module")
def predictor(saved):
    """The saved detector loaded as users load one."""
    cfg, path = saved
    return Predictor(cfg, str(path), device="cpu")


@pytest.fixture(scope="module")
def rgb():
    return shapes_image(1, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def reference(predictor, rgb):
    detections = predictor(rgb)
    assert len(detections["boxes"]) >= 5  # not degenerate: the comparisons below have something to compare
    return detections


def assert_same(detections, expected, atol=0.0):
    assert len(detections["boxes"]) == len(expected["boxes"])
    np.testing.assert_allclose(detections["boxes"], expected["boxes"], atol=atol, rtol=0)
    np.testing.assert_allclose(detections["scores"], expected["scores"], atol=atol, rtol=0)
    assert np.array_equal(detections["labels"], expected["labels"])
    assert np.array_equal(detections["category_ids"], expected["category_ids"])
    assert detections["class_names"] == expected["class_names"]


def test_output_names_the_classes_and_depends_on_the_image(predictor, rgb, reference):
    assert set(reference) == {"boxes", "scores", "labels", "category_ids", "class_names"}
    names = {4: "circle", 8: "square", 15: "star"}
    assert reference["class_names"] == [names[c] for c in reference["category_ids"].tolist()]
    assert np.array_equal(reference["category_ids"], np.array([4, 8, 15])[reference["labels"] - 1])
    other = predictor(shapes_image(2, HEIGHT, WIDTH))
    assert len(other["boxes"]) > 0
    assert other["boxes"].shape != reference["boxes"].shape or not np.allclose(other["boxes"], reference["boxes"])


def test_files_pil_images_and_uint8_tensors_give_the_arrays_detections(predictor, rgb, reference, tmp_path):
    path = tmp_path / "image.png"  # lossless: the file holds the array's pixels
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert_same(predictor(str(path)), reference)
    assert_same(predictor(path), reference)  # a pathlib.Path
    assert_same(predictor(Image.fromarray(rgb)), reference)
    assert_same(predictor(torch.from_numpy(rgb).permute(2, 0, 1)), reference)


def test_a_config_file_and_a_pathlib_weights_file_load_the_same_detector(saved, rgb, reference, tmp_path):
    cfg, path = saved
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_to_text(cfg))
    assert_same(Predictor(str(config_file), path, device="cpu")(rgb), reference)
    assert_same(Predictor(cfg, [path], device="cpu")(rgb), reference)  # an "ensemble" of one file


def test_bgr_arrays_with_format_bgr(predictor, rgb, reference):
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert_same(predictor(bgr, format="BGR"), reference)
    assert_same(predictor(torch.from_numpy(bgr).permute(2, 0, 1), format="BGR"), reference)
    swapped = predictor(bgr)  # the same pixels read as RGB are another image
    assert len(swapped["boxes"]) != len(reference["boxes"]) or not np.allclose(swapped["boxes"], reference["boxes"])


def test_float_pixels_in_0_1(predictor, rgb, reference):
    """At the test size no resize happens, so float pixels x / 255 give the uint8 detections to float
    rounding (the normalization divides x / 255 * 255 by 255 again)."""
    floats = rgb.astype(np.float32) / 255
    assert_same(predictor(floats), reference, atol=1e-3)
    assert_same(predictor(torch.from_numpy(floats).permute(2, 0, 1)), reference, atol=1e-3)
    assert_same(predictor(torch.from_numpy(floats).permute(2, 0, 1).double()), reference, atol=1e-3)
    # Float images of another size are resized in float; the same input gives the same detections.
    small = floats[::2, ::2].copy()
    first, second = predictor(small), predictor(small)
    for key in ("boxes", "scores", "labels"):
        assert np.array_equal(first[key], second[key])


def test_grayscale_and_rgba(predictor, rgb):
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    expected = predictor(np.repeat(gray[:, :, None], 3, axis=2))
    assert len(expected["boxes"]) > 0
    assert_same(predictor(gray), expected)
    assert_same(predictor(gray[:, :, None]), expected)
    assert_same(predictor(torch.from_numpy(gray)[None]), expected)
    assert_same(predictor(Image.fromarray(gray)), expected)  # PIL mode "L"
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    reference = predictor(rgb)
    assert_same(predictor(rgba), reference)  # the alpha channel is dropped
    assert_same(predictor(Image.fromarray(rgba)), reference)
    assert_same(predictor(np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]]), format="BGR"), reference)


def test_a_list_is_one_forward_pass_with_one_result_per_image(predictor, rgb, reference, tmp_path):
    second = shapes_image(2, HEIGHT, WIDTH)
    path = tmp_path / "second.png"
    cv2.imwrite(str(path), cv2.cvtColor(second, cv2.COLOR_RGB2BGR))
    calls = []
    handle = predictor.model.backbone.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        results = predictor([Image.fromarray(rgb), str(path), torch.from_numpy(rgb).permute(2, 0, 1)])
    finally:
        handle.remove()
    assert calls == [torch.Size([3, 3, HEIGHT, WIDTH])]  # one batch of three (160 and 224 divide by 32)
    assert len(results) == 3
    # Batched convolutions round differently from single ones: the same detections to float rounding.
    assert_same(results[0], reference, atol=1e-3)
    assert_same(results[2], reference, atol=1e-3)
    assert_same(results[1], predictor(second), atol=1e-3)
    assert predictor([]) == []


def test_16_bit_and_float_pil_images_are_scaled_as_files_and_arrays(predictor, rgb, tmp_path):
    """PIL's conversion to RGB clipped a 16-bit image at 255 (nearly all white) and truncated a float one
    (all black): they are the same image as the 16-bit file and the float array."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    expected = predictor(gray)
    sixteen = gray.astype(np.uint16) << 8 | 0x5A  # the low byte is what the 8-bit scaling drops
    Image.fromarray(sixteen).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    assert_same(predictor(Image.open(tmp_path / "gray16.png")), expected)
    assert_same(predictor(str(tmp_path / "gray16.png")), expected)
    floats = gray.astype(np.float32) / 255
    assert_same(predictor(Image.fromarray(floats)), predictor(floats), atol=1e-4)
    with pytest.raises(UserError, match=r"PIL image of mode I \(32-bit integers\)"):
        predictor(Image.fromarray(gray.astype(np.int32)))


def test_boxes_are_in_the_input_pixels(predictor, rgb):
    """A 100x140 image is resized to 160x224 for the network; its boxes come back scaled by 100/160, as
    a resize by hand and a run of the model show."""
    image = cv2.resize(rgb, (140, 100), interpolation=cv2.INTER_AREA)
    detections = predictor(image)
    resized = cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        network = predictor.model([{"image": torch.from_numpy(resized).permute(2, 0, 1)}])[0]
    assert len(network["boxes"]) > 0
    np.testing.assert_allclose(detections["boxes"], network["boxes"].numpy() * np.array([140 / 224, 100 / 160] * 2),
                               rtol=1e-6, atol=1e-4)
    assert detections["boxes"][:, [0, 2]].max() <= 140 and detections["boxes"][:, [1, 3]].max() <= 100
    assert np.array_equal(detections["scores"], network["scores"].numpy())


@pytest.mark.parametrize("image, message", [
    (np.full((20, 30, 3), 200.0, np.float32),
     r"^float array with values in \[200, 200\]: float pixels are read in \[0, 1\]; divide 0-255 values by 255 "
     r"or give uint8$"),
    (np.zeros((20, 30, 3), np.int64),
     r"^array of dtype int64 and shape \(20, 30, 3\): give uint8 \(0-255\) or float \(0-1\) pixels \(accepted: a "
     r"file path, a PIL image, an \(H, W, 3\) RGB or BGR \(format=\) numpy array"),
    (np.zeros((20, 30, 2), np.uint8), r"^array of shape \(20, 30, 2\): give \(H, W, C\) with C = 1, 3 or 4, or "
                                      r"\(H, W\) \(accepted: "),
    (np.zeros((3, 20, 30, 3), np.uint8), r"^array of shape \(3, 20, 30, 3\): give \(H, W, C\)"),
    (np.zeros((0, 30, 3), np.uint8), r"^empty array of shape \(0, 30, 3\): an image needs at least one pixel$"),
    (torch.zeros(20, 30, 3, dtype=torch.uint8), r"^tensor of shape \(20, 30, 3\): give \(C, H, W\) with C = 1, 3 "
                                                r"or 4, or \(H, W\)"),
    (torch.full((3, 20, 30), float("nan")), r"^float tensor with values in \[nan, nan\]"),
    (torch.zeros(3, 20, 30, dtype=torch.int32), r"^tensor of dtype int32 and shape \(20, 30, 3\)"),
    ({"image": 1}, r"^dict is not an image \(accepted: "),
])
def test_bad_inputs_get_one_line_naming_what_was_given(predictor, image, message):
    with pytest.raises(UserError, match=message) as error:
        predictor(image)
    assert "\n" not in str(error.value)


def test_a_bad_image_in_a_list_is_named_by_its_position(predictor, rgb):
    with pytest.raises(UserError, match=r"^image #1 of the list: array of dtype uint16"):
        predictor([rgb, rgb.astype(np.uint16)])
    with pytest.raises(UserError, match=r"^format='rgb': give 'RGB' or 'BGR'"):
        predictor(rgb, format="rgb")
    with pytest.raises(UserError, match=r"^image not found: nope.png$"):
        predictor("nope.png")


def test_random_predictor_needs_no_file_and_leaves_the_random_stream(rgb):
    state = torch.get_rng_state()
    predictor = Predictor.random(load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), CONFIG),
                                 num_classes=2, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    detections = predictor(rgb)
    assert predictor.class_names == ["1", "2"] and set(detections["labels"].tolist()) <= {1, 2}
    again = Predictor.random(load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), CONFIG),
                             num_classes=2, device="cpu")(rgb)
    assert np.array_equal(again["boxes"], detections["boxes"])  # the seed makes it repeatable


def test_auto_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device() == torch.device("cuda") and choose_device("cpu") == torch.device("cpu")
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^device='cuda' but no CUDA device is available: give 'cpu' or 'auto'$"):
        choose_device("cuda")
    with pytest.raises(UserError, match=r"^device='gpu' is not a device: give 'auto', 'cpu' or 'cuda'$"):
        choose_device("gpu")
