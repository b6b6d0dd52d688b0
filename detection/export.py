"""Export a detector, or its backbone alone, to ONNX or TorchScript.

The exported detector is a single function of one image:

* input ``image``: a (3, H, W) tensor (CHW, no batch dimension), RGB, values 0-255, uint8 or float
  (an ONNX file fixes the dtype it was exported with; TorchScript accepts both). Any H and W.
* inside: the test-time resize (shorter side to ``input.min_size_test``, longer side at most
  ``input.max_size_test``, bilinear), the normalization with ``input.pixel_mean``/``pixel_std``
  (and the channel flip of BGR models), and the zero padding to ``input.size_divisibility``.
* outputs ``boxes`` (N, 4) float32 xyxy in the input image's pixels, ``scores`` (N,) float32 and
  ``labels`` (N,) int64 in 1..K, best first, N <= ``test.detections_per_img``.

The exported backbone takes the same input without the resize and returns the feature maps of the
normalized, padded image: "p2".."p6" for FPN models, "res4" for C4 models.

Both carry the mapping of ``labels`` to the dataset's category ids and class names, and the test
settings fixed in the graph (:func:`export_metadata`): ONNX files as metadata properties (onnxruntime's
``session.get_modelmeta().custom_metadata_map``), TorchScript files as an extra file, ``metadata.json``.
:func:`read_export_metadata` reads either.

Both record the detector's own code: :func:`detection.data.transforms.resize_shortest_edge` (the
loader's test-time resize) and ``FasterRCNN.forward``. ONNX files come from the torch.export-based
exporter, with the image's height and width as symbolic sizes; where it fails (an older PyTorch,
no onnxscript), from the TorchScript-based one after a warning that says why. TorchScript files are
traces. The detector's modules keep the sizes a trace records as tensors, and those torch.export
records as symbolic ints, where it matters (detection/modeling/traceable.py), so that the graph
follows the input image's size instead of freezing the example's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import zipfile

import torch
from torch import nn

from resnet_engine.errors import UserError
from resnet_engine.extras import install_hint, installed

from .data.coco import CategoryMap
from .data.transforms import resize_shortest_edge
from .modeling.faster_rcnn import FasterRCNN
from .modeling.traceable import graph_nms
from .weights import load_detector, warn_if_other_test_scale

FORMATS = ("onnx", "torchscript")
# The opset of PyTorch's ONNX function library, which the torch.export-based exporter translates with.
ONNX_OPSET = 18
# RoIAlign with aligned=True (the C4 pooler) maps to ONNX RoiAlign's half_pixel mode, new in opset 16.
TORCHSCRIPT_ONNX_OPSET = 17
DETECTOR_OUTPUTS = ("boxes", "scores", "labels")
# The name of the metadata file inside a TorchScript archive (torch.jit.save's extra files).
TORCHSCRIPT_METADATA = "metadata.json"
INPUT_DTYPES = ("uint8", "float32")
# Test-time features of detection/modeling/test_time.py: they loop in Python over scales, passes
# and refinement rounds, outside anything a graph can hold. (key, description, value to set)
UNEXPORTABLE_TEST_OPTIONS = (
    ("scales", "multi-scale testing", "null"),
    ("flip", "flipped-image testing", "false"),
    ("box_refinement", "box refinement", "false"),
    ("box_voting", "box voting", "false"),
)


class ExportError(UserError):
    pass


def check_exportable(cfg) -> None:
    """One line naming the first config switch that the exported graph cannot express."""
    for key, description, off in UNEXPORTABLE_TEST_OPTIONS:
        if cfg.test[key]:
            raise ExportError(f"test.{key} ({description}) cannot be exported: set test.{key}={off}")


# -- the traced modules -----------------------------------------------------------------------------
class ExportedDetector(nn.Module):
    """One (3, H, W) image, 0-255, of any size -> (boxes in its pixels, scores, labels): the test-time
    resize, then the detector's forward."""

    def __init__(self, model: FasterRCNN, min_size: int, max_size: int):
        super().__init__()
        self.model = model
        self.min_size = min_size
        self.max_size = max_size

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Resized in float, as a graph can: the loader resizes uint8 images with OpenCV, which rounds.
        resized = resize_shortest_edge(image.float(), self.min_size, self.max_size)
        sample = {"image": resized, "height": image.shape[-2], "width": image.shape[-1]}
        detections = self.model([sample])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


class ExportedBackbone(nn.Module):
    """The detector's normalization, padding and feature extractor, without its heads; outputs in
    ``feature_names`` order."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.preprocessor = model.preprocessor
        self.backbone = model.backbone
        self.feature_names = list(getattr(model.backbone, "out_features", model.rpn.in_features))
        # The smallest image side of a file from torch.export: two pixels in the coarsest map, since
        # a map of one pixel is a special case that torch.export does not keep symbolic.
        self.min_side = 2 * max(model.backbone.out_strides.values())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch, _ = self.preprocessor([image])
        features = self.backbone(batch)
        return tuple(features[name] for name in self.feature_names)


# -- files ------------------------------------------------------------------------------------------
def build_export_module(model: FasterRCNN, cfg, backbone_only: bool = False) -> tuple[nn.Module, list[str]]:
    """The module to trace and the names of its outputs."""
    if backbone_only:
        backbone = ExportedBackbone(model)
        return backbone.eval(), backbone.feature_names
    check_exportable(cfg)
    detector = ExportedDetector(model, cfg.input.min_size_test, cfg.input.max_size_test)
    return detector.eval(), list(DETECTOR_OUTPUTS)


def example_image(cfg, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A (3, H, W) noise image at the test scale, landscape: only its dtype and rank reach the graph."""
    height = cfg.input.min_size_test
    width = min(int(height * 4 / 3), cfg.input.max_size_test)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, height, width), generator=generator).to(dtype)


def export_onnx(module: nn.Module, image: torch.Tensor, path: str, output_names: list[str]) -> str:
    """ONNX with a dynamic height and width and a dynamic number of detections; returns the exporter
    that wrote it, "torch.export" or, after a warning naming the reason, "torchscript"."""
    try:
        export_onnx_dynamo(module, image, path, output_names)
        return "torch.export"
    except Exception as error:  # noqa: BLE001 - whatever stops the new exporter, the old one is tried
        warnings.warn(f"the torch.export-based ONNX exporter failed ({short_reason(error)}); the file comes "
                      "from the TorchScript-based exporter instead", stacklevel=2)
    export_onnx_torchscript(module, image, path, output_names)
    return "torchscript"


def export_onnx_dynamo(module: nn.Module, image: torch.Tensor, path: str, output_names: list[str]) -> None:
    """``torch.export`` with the image's height and width as symbolic sizes, then
    ``torch.onnx.export(dynamo=True)`` on the program. The program is exported here rather than by
    the ONNX exporter, which would quietly fix the image size where the sizes cannot stay symbolic."""
    if not installed("onnxscript"):
        raise ExportError(f"onnxscript is not installed ({install_hint('onnxscript')})")
    min_side = getattr(module, "min_side", 2)  # the detector resizes every image: any size from 2 pixels
    dims = {"image": {1: torch.export.Dim("height", min=min_side), 2: torch.export.Dim("width", min=min_side)}}
    with _quiet_export():
        program = torch.export.export(module, (image,), dynamic_shapes=dims, strict=False)
        onnx_program = torch.onnx.export(program, (image,), dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=["image"], output_names=output_names, verbose=False)
    image_shape = onnx_program.model.graph.inputs[0].shape
    onnx_program.rename_axes({image_shape[1]: "height", image_shape[2]: "width"})  # torch.export's s0, s1
    onnx_program.save(path)


def export_onnx_torchscript(module: nn.Module, image: torch.Tensor, path: str, output_names: list[str]) -> None:
    """The TorchScript-based exporter (dynamo=False), which PyTorch has deprecated: torchvision
    registers ONNX translations of its nms, roi_align (with aligned=True at opset 16) and roi_pool
    for it, and a trace handles the data-dependent sizes of NMS and score thresholding as ordinary
    dynamic axes."""
    dynamic_axes = {"image": {1: "height", 2: "width"}}
    for name in output_names:
        dynamic_axes[name] = {0: "detections"} if name in DETECTOR_OUTPUTS else {2: f"{name}_height",
                                                                                3: f"{name}_width"}
    with _quiet_trace():
        torch.onnx.export(module, (image,), path, dynamo=False, opset_version=TORCHSCRIPT_ONNX_OPSET,
                          input_names=["image"], output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)


def short_reason(error: BaseException, limit: int = 300) -> str:
    """The root of an exporter's chain of errors, on one line: its type, its first line and, for the
    guards of torch.export, the line of code it names."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    where = next((line for line in lines if line.startswith("Caused by:")), "")
    text = " ".join(part for part in (f"{type(error).__name__}: {lines[0] if lines else ''}", where) if part)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def export_torchscript(module: nn.Module, image: torch.Tensor, path: str, metadata: dict[str, str] | None = None) -> None:
    """A traced module; sizes are traced as tensors, so it runs on any image size and on uint8 or float.
    ``metadata`` goes into the archive as the extra file ``metadata.json``."""
    with _quiet_trace(), torch.no_grad():
        traced = torch.jit.trace(module, (image,), check_trace=False)
    extra_files = {TORCHSCRIPT_METADATA: json.dumps(metadata or {})}
    torch.jit.save(traced, path, _extra_files=extra_files)


# -- what a file carries besides its graph ----------------------------------------------------------
def export_metadata(cfg, category_map: CategoryMap, backbone_only: bool, input_dtype: str) -> dict[str, str]:
    """What a deployed file needs to be read without the toolkit: which category id and class name each
    output label stands for (labels 1..K index these lists from 1), the input it takes, and the test
    settings fixed in its graph. Every value is a string (ONNX metadata holds strings); lists are JSON."""
    metadata = {
        "producer": "resnet-detection",
        "model": "backbone" if backbone_only else "detector",
        "input": f"image: (3, H, W) RGB, values 0-255, {input_dtype}",
        "category_ids": json.dumps([int(c) for c in category_map.category_ids]),
        "class_names": json.dumps([str(n) for n in category_map.names]),
    }
    if not backbone_only:
        metadata.update({
            "labels": "labels 1..K: the K-th entry of category_ids and class_names",
            "min_size_test": str(cfg.input.min_size_test),
            "max_size_test": str(cfg.input.max_size_test),
            "score_thresh": str(cfg.test.score_thresh),
            "nms_thresh": str(cfg.test.nms_thresh),
            "detections_per_img": str(cfg.test.detections_per_img),
        })
    return metadata


def write_onnx_metadata(path: str, metadata: dict[str, str]) -> None:
    """Adds ``metadata`` to an ONNX file's metadata properties (the model is rewritten in place)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    kept = [prop for prop in model.metadata_props if prop.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def read_export_metadata(path: str) -> dict:
    """The metadata of an exported file (ONNX or TorchScript), with category_ids and class_names as lists;
    an empty dict for a file exported without it."""
    if not zipfile.is_zipfile(path):  # TorchScript archives are zip files, ONNX files protobuf
        import onnx

        raw = {prop.key: prop.value for prop in onnx.load(path, load_external_data=False).metadata_props}
    else:
        extra_files = {TORCHSCRIPT_METADATA: ""}
        with _quiet_trace():
            torch.jit.load(path, map_location="cpu", _extra_files=extra_files)
        raw = json.loads(extra_files[TORCHSCRIPT_METADATA] or "{}")
    return {key: json.loads(value) if key in ("category_ids", "class_names") else value for key, value in raw.items()}


@contextlib.contextmanager
def _quiet_export():
    """Silences the notes torch.export and the ONNX exporter print on their way (deprecations inside
    torchvision's symbolic registrations, symbols they cannot attribute to a line of code): the
    file is checked afterwards, and a failure raises (export_onnx names its reason)."""
    quiet = logging.CRITICAL  # torch logs the guard that fails as an error too; the failure raises
    with (warnings.catch_warnings(), _logger_level("torch", quiet), _logger_level("onnxscript", quiet),
          _logger_level("onnx_ir", quiet)):
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


@contextlib.contextmanager
def _logger_level(name: str, level: int):
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def _quiet_trace():
    """Silences the tracer's notes on Python values it records as constants (the ones left are
    constants of the model: strides, thresholds, the class count, the one image), the deprecation
    notes of torch.jit and of the TorchScript-based ONNX exporter, and that exporter's caution on
    negative indices, which the detector's indexing (top-k positions, images of a batch) never has."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing",
                                category=UserWarning)
        yield


def default_output_path(weights: str, fmt: str, backbone_only: bool) -> str:
    """Next to the weights: model_final.pth -> model_final.onnx, model_final_backbone.torchscript.pt."""
    stem = os.path.splitext(weights)[0] + ("_backbone" if backbone_only else "")
    return stem + (".onnx" if fmt == "onnx" else ".torchscript.pt")


def export_detector(cfg, weights: str, fmt: str, out: str | None = None, backbone_only: bool = False,
                    input_dtype: str = "uint8", check: bool = True) -> tuple[str, dict | None]:
    """Load ``weights`` into the detector of ``cfg`` and write it as ``fmt``.

    Returns the file written and, with ``check``, the comparison of that file with the PyTorch
    graph on an image of another size than the export example (see :func:`check_export`).
    """
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"input dtype {input_dtype!r}: choose one of {', '.join(INPUT_DTYPES)}")
    if not backbone_only:
        check_exportable(cfg)  # before the model is built and loaded
    if os.path.isdir(weights):
        raise ExportError(f"{weights} is a folder: give the detector file in it (model_final.pth)")
    if not os.path.isfile(weights):
        raise ExportError(f"weights file not found: {weights}")
    warn_if_other_test_scale(cfg, weights)  # the file resizes to the config's test scale for good
    model, category_map = load_detector(cfg, weights, torch.device("cpu"))
    module, output_names = build_export_module(model, cfg, backbone_only)
    image = example_image(cfg, getattr(torch, input_dtype))
    path = out or default_output_path(weights, fmt, backbone_only)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    metadata = export_metadata(cfg, category_map, backbone_only, input_dtype if fmt == "onnx" else "uint8 or float32")
    if fmt == "onnx":
        export_onnx(module, image, path, output_names)
        write_onnx_metadata(path, metadata)
    else:
        export_torchscript(module, image, path, metadata)
    if check and fmt == "onnx" and not installed("onnxruntime"):
        warnings.warn(f"onnxruntime is not installed: the ONNX file was not checked ({install_hint('onnxruntime')})",
                      stacklevel=2)
        check = False
    report = check_export(path, fmt, module, second_image(cfg, image.dtype), output_names) if check else None
    return path, report


# -- checking a written file ---------------------------------------------------------------------------
def second_image(cfg, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A portrait image, unlike the landscape export example: another padded size at every level."""
    height = int(cfg.input.min_size_test * 1.25) + 7
    width = int(cfg.input.min_size_test * 0.8) + 5
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, height, width), generator=generator).to(dtype)


def run_exported(path: str, fmt: str, image: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of an exported file on ``image``: onnxruntime for ONNX, torch.jit.load for TorchScript."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the graph's unused-initializer notes are not the user's concern
        options.intra_op_num_threads = torch.get_num_threads()  # the same share of the machine as PyTorch
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return [torch.from_numpy(out) for out in session.run(None, {"image": image.numpy()})]
    with _quiet_trace(), torch.no_grad():
        return list(torch.jit.load(path)(image))


def check_export(path: str, fmt: str, module: nn.Module, image: torch.Tensor, output_names: list[str]) -> dict:
    """How closely the exported file reproduces ``module`` on ``image``.

    Detections are matched by label and box rather than by position: on an image where scores are
    nearly tied, float rounding may swap neighbours in the ranking without changing the detections.
    PyTorch runs its NMS in the file's form (:func:`detection.modeling.traceable.graph_nms`): the
    eager form orders exactly tied scores in a way that no file reproduces.
    """
    with torch.no_grad(), graph_nms():
        expected = list(module(image))
    actual = run_exported(path, fmt, image)
    report = {"image_size": list(image.shape),
              "output_shapes": {name: list(a.shape) for name, a in zip(output_names, actual)}}
    if isinstance(module, ExportedDetector):
        return {**report, **match_detections(expected, actual)}
    same_shapes = [a.shape for a in actual] == [e.shape for e in expected]
    diff = max(float((a - e).abs().max()) for a, e in zip(actual, expected)) if same_shapes else float("inf")
    return {**report, "max_abs_diff": diff}


def match_detections(expected: list[torch.Tensor], actual: list[torch.Tensor], box_tolerance: float = 1e-2) -> dict:
    """Each expected detection's nearest actual one of the same label; counts and largest differences."""
    (boxes, scores, labels), (other_boxes, other_scores, other_labels) = expected, actual
    result = {"expected": len(boxes), "actual": len(other_boxes), "matched": 0, "box_diff": 0.0, "score_diff": 0.0}
    if len(boxes) == 0 or len(other_boxes) == 0:
        return result
    distance = (boxes[:, None, :] - other_boxes[None, :, :]).abs().amax(dim=2)
    distance[labels[:, None] != other_labels[None, :]] = float("inf")
    nearest, index = distance.min(dim=1)
    found = nearest <= box_tolerance
    if found.any():
        result["matched"] = int(found.sum())
        result["box_diff"] = float(nearest[found].max())
        result["score_diff"] = float((scores[found] - other_scores[index[found]]).abs().max())
    return result
