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

The graph re-expresses the detector's inference path with sizes kept as tensors: the modules of
the detector itself compute with Python ints (padding, anchor grids, top-k counts), which a trace
would freeze at the example's size. The parity tests compare it with the detector's own forward.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.operators import shape_as_tensor  # public; tensor.shape would be constants in a trace
from torchvision.ops import nms, remove_small_boxes

from resnet_engine.errors import UserError

from .modeling.faster_rcnn import FasterRCNN
from .modeling.rpn import flatten_level

FORMATS = ("onnx", "torchscript")
# RoIAlign with aligned=True (the C4 pooler) maps to ONNX RoiAlign's half_pixel mode, new in opset 16.
ONNX_OPSET = 17
DETECTOR_OUTPUTS = ("boxes", "scores", "labels")
INPUT_DTYPES = ("uint8", "float32")
# Test-time features of detection/modeling/test_time.py: they resize images with OpenCV and loop in
# Python over scales and passes, outside anything a graph can hold. (key, description, value to set)
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


# -- sizes that stay symbolic in a trace ------------------------------------------------------------
def _as_size(value: torch.Tensor):
    """A 0-dim size tensor where an op wants an int: kept as a tensor while tracing (so the graph
    follows the input's size), a Python int when running eagerly (where ops reject tensors)."""
    return value if torch.jit.is_tracing() else int(value)


def _height_width(tensor: torch.Tensor) -> torch.Tensor:
    """(2,) int64 tensor of the last two dims; ``tensor.shape`` would give constants in a trace."""
    return shape_as_tensor(tensor)[-2:]


def _clip(boxes: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Clip (..., 4) xyxy boxes to [0, width] x [0, height], as torchvision's clip_boxes_to_image."""
    height, width = size.to(boxes.dtype)
    limits = torch.stack([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limits)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """torchvision's batched_nms by coordinate offsets (what it does itself while tracing), without
    its Python branch on an empty input: a trace taken where a stage had no boxes would otherwise
    return nothing for every image. Keeps the boxes that per-class NMS keeps."""
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, threshold)


# -- the detector as one graph -------------------------------------------------------------------------
class ImageInput(nn.Module):
    """Normalization and padding of FasterRCNN.preprocess for one (3, H, W) image, with symbolic sizes."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.register_buffer("pixel_mean", model.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.clone(), persistent=False)
        self.size_divisibility = model.size_divisibility
        self.bgr = model.input_format == "BGR"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float 0-255 -> (1, 3, H', W') normalized and zero-padded to the stride."""
        image = image.float() / 255
        if self.bgr:
            image = image.flip(0)
        normalized = (image - self.pixel_mean) / self.pixel_std
        size = _height_width(image)
        stride = self.size_divisibility
        padding = torch.div(size + stride - 1, stride, rounding_mode="floor") * stride - size
        pad_h, pad_w = padding[0], padding[1]
        return F.pad(normalized, [0, _as_size(pad_w), 0, _as_size(pad_h)])[None]


class ShortestEdgeResize(nn.Module):
    """EvalTransform's shortest-edge resize (bilinear, no antialiasing, like OpenCV's INTER_LINEAR)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size = float(min_size)
        self.max_size = float(max_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = _height_width(image).float()
        scale = torch.minimum(self.min_size / size.min(), self.max_size / size.max())
        new_size = (size * scale).round().long()
        resized = F.interpolate(image.float()[None], size=(_as_size(new_size[0]), _as_size(new_size[1])),
                                mode="bilinear", align_corners=False)
        return resized[0]


class DetectorGraph(nn.Module):
    """The inference path of a FasterRCNN for one image, traceable with any input size."""

    def __init__(self, model: FasterRCNN, min_size: int, max_size: int):
        super().__init__()
        self.resize = ShortestEdgeResize(min_size, max_size)
        self.image_input = ImageInput(model)
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.cell_anchors = model.rpn.anchor_generator.cell_anchors

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        original_size = _height_width(image)
        resized = self.resize(image)
        size = _height_width(resized)
        batch = self.image_input(resized)
        features = self.backbone(batch)
        proposals = self.propose(features, _height_width(batch), size)
        boxes, scores, labels = self.detect(features, proposals, size)
        factors = (original_size.float() / size.float()).flip(0).repeat(2)  # (w, h, w, h) ratios
        return boxes * factors, scores, labels

    # -- RPN --------------------------------------------------------------------------------------
    def anchors(self, level: int, feature: torch.Tensor, padded_size: torch.Tensor) -> torch.Tensor:
        """AnchorGenerator.grid_anchors with the grid and stride taken from the traced sizes."""
        grid = _height_width(feature)
        stride = torch.div(padded_size, grid, rounding_mode="floor").float()
        shifts_x = torch.arange(_as_size(grid[1]), dtype=torch.float32, device=feature.device) * stride[1]
        shifts_y = torch.arange(_as_size(grid[0]), dtype=torch.float32, device=feature.device) * stride[0]
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        base = self.cell_anchors[level].to(feature.device)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def propose(self, features: dict, padded_size: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """RegionProposalNetwork.propose for one image at test time."""
        rpn = self.rpn
        maps = [features[name] for name in rpn.in_features]
        logits, deltas = rpn.head(maps)
        pre_topk, post_topk = rpn.pre_nms_topk[1], rpn.post_nms_topk[1]
        scores, boxes, levels = [], [], []
        for level, (level_map, level_logits, level_deltas) in enumerate(zip(maps, logits, deltas)):
            flat_logits, flat_deltas = flatten_level(level_logits, level_deltas)
            flat_logits, flat_deltas = flat_logits[0], flat_deltas[0]
            count = shape_as_tensor(flat_logits)[0].clamp(max=pre_topk)
            top_logits, top_index = flat_logits.topk(_as_size(count))
            anchors = self.anchors(level, level_map, padded_size)
            boxes.append(rpn.box_coder.decode(flat_deltas[top_index], anchors[top_index]))
            scores.append(top_logits)
            levels.append(torch.full_like(top_index, level))
        boxes = _clip(torch.cat(boxes), size)
        scores, levels = torch.cat(scores).sigmoid(), torch.cat(levels)
        keep = remove_small_boxes(boxes, max(rpn.min_size, 1e-3))
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[:post_topk]
        return boxes[keep]

    # -- box head ----------------------------------------------------------------------------------
    def region_features(self, features: dict, proposals: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """RoIHeads.region_features for one image; the pooler's image size only sets FPN scales."""
        heads = self.roi_heads
        image_sizes = [(size[0], size[1])]
        regions = heads.box_head(heads.pooler(features, [proposals], image_sizes))
        if not heads.global_context:
            return regions
        height, width = size.float()
        zero = torch.zeros_like(height)
        whole_image = torch.stack([zero, zero, width, height])[None]
        context = heads.box_head(heads.pooler(features, [whole_image], image_sizes))
        return torch.cat([regions, context.expand(regions.shape[0], -1)], dim=1)

    def detect(self, features: dict, proposals: torch.Tensor, size: torch.Tensor):
        """RoIHeads.predict + select_detections for one image."""
        heads = self.roi_heads
        logits, deltas = heads.predictor(self.region_features(features, proposals, size))
        boxes = heads.box_coder.decode(deltas.float(), proposals.float())
        boxes = _clip(boxes.view(boxes.shape[0], -1, 4), size)
        scores = F.softmax(logits.float(), dim=-1)
        labels = torch.arange(scores.shape[1], device=scores.device).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > heads.score_thresh).flatten()
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]


class BackboneGraph(nn.Module):
    """Normalization, padding and the detector's feature extractor; outputs in ``feature_names`` order."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.image_input = ImageInput(model)
        self.backbone = model.backbone
        self.feature_names = list(getattr(model.backbone, "out_features", model.rpn.in_features))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(self.image_input(image))
        return tuple(features[name] for name in self.feature_names)


# -- files ------------------------------------------------------------------------------------------
def build_export_module(model: FasterRCNN, cfg, backbone_only: bool = False) -> tuple[nn.Module, list[str]]:
    """The module to trace and the names of its outputs."""
    if backbone_only:
        graph = BackboneGraph(model)
        return graph.eval(), graph.feature_names
    check_exportable(cfg)
    return DetectorGraph(model, cfg.input.min_size_test, cfg.input.max_size_test).eval(), list(DETECTOR_OUTPUTS)


def example_image(cfg, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A (3, H, W) noise image at the test scale, landscape: only its dtype and rank reach the graph."""
    height = cfg.input.min_size_test
    width = min(int(height * 4 / 3), cfg.input.max_size_test)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, height, width), generator=generator).to(dtype)


def export_onnx(module: nn.Module, image: torch.Tensor, path: str, output_names: list[str]) -> None:
    """ONNX with a dynamic height and width and a dynamic number of detections.

    The TorchScript-based exporter (dynamo=False): torchvision registers ONNX translations of its
    nms, roi_align (with aligned=True at opset 16) and roi_pool for it, and a trace handles the
    data-dependent sizes of NMS and score thresholding as ordinary dynamic axes. The dynamo
    exporter goes through torch.export, where each of those sizes is an unbacked symbol that needs
    guards throughout the proposal and selection code, and it needs onnxscript besides.
    """
    dynamic_axes = {"image": {1: "height", 2: "width"}}
    for name in output_names:
        dynamic_axes[name] = {0: "detections"} if name in DETECTOR_OUTPUTS else {2: f"{name}_height",
                                                                                3: f"{name}_width"}
    with _quiet_trace():
        torch.onnx.export(module, (image,), path, dynamo=False, opset_version=ONNX_OPSET, input_names=["image"],
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


def export_torchscript(module: nn.Module, image: torch.Tensor, path: str) -> None:
    """A traced module; sizes are traced as tensors, so it runs on any image size and on uint8 or float."""
    with _quiet_trace(), torch.no_grad():
        traced = torch.jit.trace(module, (image,), check_trace=False)
    traced.save(path)


@contextlib.contextmanager
def _quiet_trace():
    """Silences the tracer's notes on Python values it records as constants (the ones left are
    constants of the model: feature strides, thresholds, the class count) and the deprecation
    notes of torch.jit and of the TorchScript-based ONNX exporter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
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
    from .inference import load_detector

    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"input dtype {input_dtype!r}: choose one of {', '.join(INPUT_DTYPES)}")
    if not backbone_only:
        check_exportable(cfg)  # before the model is built and loaded
    if not os.path.isfile(weights):
        raise ExportError(f"weights file not found: {weights}")
    model, _ = load_detector(cfg, weights, torch.device("cpu"))
    module, output_names = build_export_module(model, cfg, backbone_only)
    image = example_image(cfg, getattr(torch, input_dtype))
    path = out or default_output_path(weights, fmt, backbone_only)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "onnx":
        export_onnx(module, image, path, output_names)
    else:
        export_torchscript(module, image, path)
    if check and fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        warnings.warn("onnxruntime is not installed: the ONNX file was not checked (pip install onnxruntime)",
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
    """
    with torch.no_grad():
        expected = list(module(image))
    actual = run_exported(path, fmt, image)
    report = {"image_size": list(image.shape),
              "output_shapes": {name: list(a.shape) for name, a in zip(output_names, actual)}}
    if isinstance(module, DetectorGraph):
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
