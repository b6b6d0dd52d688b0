"""Exported detectors give the PyTorch detections: ONNX (from the torch.export-based exporter, and
from the TorchScript-based one it falls back to) through onnxruntime, TorchScript through
torch.jit.load, for the FPN and the C4 design, at the export size and at another image size."""

import json
import os
import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import detection.export
from detection.config import load_detection_config
from detection.data.transforms import shortest_edge_scale
from detection.export import (
    ExportError,
    check_exportable,
    export_detector,
    read_export_metadata,
    run_exported,
    short_reason,
)
from detection.modeling.build import build_model
from tests.conftest import ROOT
from tests.detection.tv_reference import shapes_image
from tests.helpers import subprocess_env

SIZE = ["input.min_size_test=320", "input.max_size_test=640"]
CONFIGS = {
    "fpn": ("configs/shapes.yaml", SIZE),
    "c4": ("configs/base_det.yaml", SIZE + ["model.backbone.depth=18", "model.backbone.norm=bn",
                                            "model.backbone.freeze_at=0", "model.backbone.base_width=32",
                                            "model.rpn.pre_nms_topk_test=1000", "model.rpn.post_nms_topk_test=100"]),
}
NUM_CLASSES = 5
# A custom dataset's category ids (not 1..K) and names, as a trained detector's file records them.
CATEGORY_IDS = [3, 7, 11, 20, 90]
CLASS_NAMES = ["circle", "square", "triangle", "ring", "star"]
# 320 x 448 is already at the test scale (shorter side 320); 400 x 300 is resized to 427 x 320 inside
# the exported model and pads to another size (448 x 320) than the export example at every level.
EXPORT_SIZE = (320, 448)
OTHER_SIZE = (400, 300)
# The torch.export-based path needs torch.compiler.is_exporting (not in PyTorch 2.4 or 2.5); on an older
# PyTorch (`make floors`) every ONNX file comes from the fallback, and is checked all the same.
TORCH_EXPORT = hasattr(torch.compiler, "is_exporting")


def image_tensor(seed: int, height: int, width: int) -> torch.Tensor:
    return torch.from_numpy(shapes_image(seed, height, width)).permute(2, 0, 1).contiguous()


def calibrated_detector(cfg) -> nn.Module:
    """A random detector that acts like a trained one: BatchNorm statistics measured on a few images
    (train-mode BN, momentum=None: the plain average), RPN and class scores sharpened so that they are
    spread out rather than tied (as tests/detection/tv_reference.py does for torchvision's model)."""
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES, backbone_weights=False).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    with torch.no_grad():
        for seed in range(3):
            model([{"image": image_tensor(100 + seed, *EXPORT_SIZE)}])
        model.eval()
        model.rpn.head.cls_logits.weight.mul_(100)
        model.roi_heads.predictor.cls_score.weight.mul_(4)
        model.roi_heads.predictor.bbox_pred.weight.mul_(3)
    return model


def reference_detections(model, image: torch.Tensor) -> dict:
    """The PyTorch detector on ``image`` resized as the test transform sizes it (bilinear, float)."""
    height, width = image.shape[-2:]
    scale = shortest_edge_scale(height, width, 320, 640)
    size = (int(round(height * scale)), int(round(width * scale)))
    resized = F.interpolate(image.float()[None], size=size, mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        return model([{"image": resized, "height": height, "width": width}])[0]


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """Calibrated detectors, their weights files and PyTorch references, built once per design."""
    built = {}

    def get(arch: str) -> SimpleNamespace:
        if arch not in built:
            path, overrides = CONFIGS[arch]
            cfg = load_detection_config(os.path.join(ROOT, path), overrides)
            model = calibrated_detector(cfg)
            weights = tmp_path_factory.mktemp(arch) / "model_final.pth"
            meta = {"num_classes": NUM_CLASSES, "category_ids": CATEGORY_IDS, "class_names": CLASS_NAMES}
            torch.save({"model": model.state_dict(), "meta": meta}, weights)
            images = [image_tensor(7, *EXPORT_SIZE), image_tensor(9, *OTHER_SIZE)]
            built[arch] = SimpleNamespace(arch=arch, cfg=cfg, model=model, weights=str(weights), images=images,
                                          references=[reference_detections(model, image) for image in images])
        return built[arch]

    return get


@pytest.fixture(params=sorted(CONFIGS))
def detector(request, detectors):
    return detectors(request.param)


def compare(reference: dict, outputs: list[torch.Tensor]) -> None:
    boxes, scores, labels = outputs
    assert len(reference["boxes"]) > 10, "the reference should detect something"
    assert boxes.shape == reference["boxes"].shape
    assert torch.equal(labels, reference["labels"])
    assert (boxes - reference["boxes"]).abs().max() <= 1e-3
    assert (scores - reference["scores"]).abs().max() <= 1e-4


def export_without_fallback(*args, **kwargs):
    """export_detector, failing on the warning that the TorchScript-based exporter was taken."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export_detector(*args, **kwargs)
    fallbacks = [str(w.message) for w in caught if "TorchScript-based exporter" in str(w.message)]
    assert not (TORCH_EXPORT and fallbacks), fallbacks
    return result


def check_metadata(metadata: dict, cfg, input_dtype: str) -> None:
    """The file names the category id and class name of each label, its input and its fixed test settings."""
    assert metadata["category_ids"] == CATEGORY_IDS and metadata["class_names"] == CLASS_NAMES
    assert metadata["model"] == "detector"
    assert metadata["input"] == f"image: (3, H, W) RGB, values 0-255, {input_dtype}"
    assert (metadata["min_size_test"], metadata["max_size_test"]) == ("320", "640")
    assert float(metadata["score_thresh"]) == cfg.test.score_thresh
    assert int(metadata["detections_per_img"]) == cfg.test.detections_per_img


def check_onnx_file(detector, path: str, dtype: str) -> None:
    """The torch.export-based exporter's file, with symbolic height and width, at two image sizes."""
    check_metadata(read_export_metadata(path), detector.cfg, dtype)
    import onnxruntime  # what a deployment reads: the same properties, as strings

    custom = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(custom["category_ids"]) == CATEGORY_IDS and json.loads(custom["class_names"]) == CLASS_NAMES
    model = onnx.load(path)
    if TORCH_EXPORT:
        assert model.opset_import[0].version == detection.export.ONNX_OPSET  # not the fallback's opset 17
    graph_input = model.graph.input[0]
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [3, "height", "width"]
    for image, reference in zip(detector.images, detector.references):
        compare(reference, run_exported(path, "onnx", image.to(getattr(torch, dtype))))


def test_onnx_matches_pytorch_at_two_image_sizes(detectors, tmp_path):
    """The C4 design with float32 input; the FPN design with uint8 input is exported by the command
    line in test_command_line_exports_checks_and_refuses (each export takes half a minute)."""
    detector = detectors("c4")
    path, _ = export_without_fallback(detector.cfg, detector.weights, "onnx", str(tmp_path / "model.onnx"),
                                      input_dtype="float32", check=False)
    check_onnx_file(detector, path, "float32")


def test_fallback_to_the_torchscript_based_exporter_says_why_and_is_checked(detectors, tmp_path, monkeypatch):
    """Where the torch.export-based exporter fails, the file comes from the TorchScript-based one: a
    warning names the reason, and the file still matches PyTorch at two image sizes."""
    detector = detectors("fpn")

    def fails(*args, **kwargs):
        raise RuntimeError("no exporter today\nsecond line of the report")

    monkeypatch.setattr(detection.export, "export_onnx_dynamo", fails)
    with pytest.warns(UserWarning) as caught:
        path, report = export_detector(detector.cfg, detector.weights, "onnx", str(tmp_path / "model.onnx"))
    messages = [str(w.message) for w in caught]
    assert ("the torch.export-based ONNX exporter failed (RuntimeError: no exporter today); the file comes from "
            "the TorchScript-based exporter instead") in messages
    assert onnx.load(path).opset_import[0].version == detection.export.TORCHSCRIPT_ONNX_OPSET
    check_metadata(read_export_metadata(path), detector.cfg, "uint8")
    assert report["matched"] == report["expected"] == report["actual"] > 10
    assert report["box_diff"] <= 1e-3 and report["score_diff"] <= 1e-4
    for image, reference in zip(detector.images, detector.references):
        compare(reference, run_exported(path, "onnx", image))


def test_without_onnxscript_the_torch_export_path_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(detection.export, "installed", lambda module: module != "onnxscript")
    with pytest.raises(ExportError, match=re.escape("onnxscript is not installed (pip install 'resnet-detection[export]')")):
        detection.export.export_onnx_dynamo(nn.Identity(), torch.zeros(3, 8, 8), str(tmp_path / "m.onnx"), ["out"])


def test_short_reason_is_the_root_error_and_the_line_it_names():
    try:
        try:
            raise ValueError("Could not guard on data-dependent expression u0 > 4000\n\nconsider using ...\n"
                             "Caused by: (torchvision/ops/boxes.py:86 in batched_nms)\nmore help")
        except ValueError as inner:
            raise RuntimeError("Failed to export the model with torch.export.") from inner
    except RuntimeError as error:
        reason = short_reason(error)
    assert reason == ("ValueError: Could not guard on data-dependent expression u0 > 4000 Caused by: "
                      "(torchvision/ops/boxes.py:86 in batched_nms)")
    assert short_reason(RuntimeError("x" * 500)) == "RuntimeError: " + "x" * 283 + "..."


def test_torchscript_round_trip_matches_pytorch(detector, tmp_path):
    path, report = export_detector(detector.cfg, detector.weights, "torchscript", str(tmp_path / "model.pt"))
    check_metadata(read_export_metadata(path), detector.cfg, "uint8 or float32")
    # The export's own check: PyTorch and the loaded file on a noise image of a third size.
    assert report["matched"] == report["expected"] == report["actual"] > 10
    assert report["box_diff"] <= 1e-3 and report["score_diff"] <= 1e-4
    for image, reference in zip(detector.images, detector.references):
        compare(reference, run_exported(path, "torchscript", image))
        compare(reference, run_exported(path, "torchscript", image.float()))


def test_global_context_exports(tmp_path):
    """The C4 head with the whole image as one more region (paper, Appendix B): in the graph the
    context feature joins however many proposals the image has."""
    path, overrides = CONFIGS["c4"]
    cfg = load_detection_config(os.path.join(ROOT, path), overrides + ["model.roi_head.global_context=true"])
    model = calibrated_detector(cfg)
    weights = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": {"num_classes": NUM_CLASSES}}, weights)
    path, report = export_without_fallback(cfg, str(weights), "onnx", str(tmp_path / "model.onnx"))
    assert report["matched"] == report["expected"] == report["actual"] > 10
    # A file that records no category ids: labels stand for themselves, named by number.
    metadata = read_export_metadata(path)
    assert metadata["category_ids"] == [1, 2, 3, 4, 5] and metadata["class_names"] == ["1", "2", "3", "4", "5"]
    for seed, size in [(7, EXPORT_SIZE), (9, OTHER_SIZE)]:
        image = image_tensor(seed, *size)
        compare(reference_detections(model, image), run_exported(path, "onnx", image))


def test_backbone_only_gives_the_feature_maps(detector, tmp_path):
    path, _ = export_without_fallback(detector.cfg, detector.weights, "onnx", str(tmp_path / "backbone.onnx"),
                                      backbone_only=True, check=False)
    names = ["p2", "p3", "p4", "p5", "p6"] if detector.arch == "fpn" else ["res4"]
    assert [output.name for output in onnx.load(path).graph.output] == names
    metadata = read_export_metadata(path)
    assert metadata["model"] == "backbone" and metadata["category_ids"] == CATEGORY_IDS
    assert "score_thresh" not in metadata  # no detection settings in a feature extractor
    for image in detector.images:  # no resize: the features of the image as given
        with torch.no_grad():
            expected = detector.model.backbone(detector.model.preprocess([image])[0])
        actual = run_exported(path, "onnx", image)
        for name, features in zip(names, actual):
            torch.testing.assert_close(features, expected[name], atol=1e-4, rtol=1e-4)


def test_torchscript_backbone_holds_the_backbone_alone(detector, tmp_path):
    path, report = export_detector(detector.cfg, detector.weights, "torchscript", str(tmp_path / "backbone.pt"),
                                   backbone_only=True)
    assert report["max_abs_diff"] <= 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation note
        loaded = torch.jit.load(path)
    # The backbone's weights (and BatchNorm statistics) and the input's mean and std, none of the
    # RPN's or the box head's tensors.
    expected = {f"backbone.{name}": tensor for name, tensor in detector.model.backbone.state_dict().items()}
    expected |= {f"preprocessor.{name}": tensor for name, tensor in detector.model.preprocessor.named_buffers()}
    saved = loaded.state_dict()
    assert sorted(saved) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), name


@pytest.mark.parametrize(("override", "message"), [
    ("test.scales=[400,600]", "test.scales (multi-scale testing) cannot be exported: set test.scales=null"),
    ("test.flip=true", "test.flip (flipped-image testing) cannot be exported: set test.flip=false"),
    ("test.box_refinement=true", "test.box_refinement (box refinement) cannot be exported: set test.box_refinement=false"),
    ("test.box_voting=true", "test.box_voting (box voting) cannot be exported: set test.box_voting=false"),
])
def test_test_time_features_are_refused_with_the_switch_to_turn_off(override, message):
    cfg = load_detection_config(os.path.join(ROOT, "configs/shapes.yaml"), [override])
    with pytest.raises(ExportError) as error:
        check_exportable(cfg)
    assert str(error.value) == message


def test_missing_weights_file_is_named(tmp_path):
    cfg = load_detection_config(os.path.join(ROOT, "configs/shapes.yaml"), [])
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(ExportError, match=f"^weights file not found: {re.escape(missing)}$"):
        export_detector(cfg, missing, "onnx")


def run_export_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), timeout=300)


def test_command_line_exports_checks_and_refuses(detectors, tmp_path):
    detector = detectors("fpn")
    path, overrides = CONFIGS["fpn"]
    result = run_export_tool("--cfg", path, "--weights", detector.weights, "--format", "onnx",
                             "--out", str(tmp_path / "m.onnx"), *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'm.onnx'}"
    assert lines[1].startswith("checked on a 3x407x261 image: 100 of 100 PyTorch detections found"), lines[1]
    assert not (TORCH_EXPORT and "warning" in result.stderr), result.stderr  # torch.export's exporter wrote it
    assert "onnx_ir" not in result.stderr, result.stderr[-2000:]  # the exporter's notes are not the user's
    check_onnx_file(detector, str(tmp_path / "m.onnx"), "uint8")

    result = run_export_tool("--cfg", path, "--weights", detector.weights, "--format", "onnx", "test.scales=[400]",
                             *overrides)
    assert result.returncode == 2
    assert result.stderr == "error: test.scales (multi-scale testing) cannot be exported: set test.scales=null\n"
