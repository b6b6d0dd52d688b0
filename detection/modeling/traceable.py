"""The steps of the detector's forward that take another form while it is traced for export.

A trace (``torch.jit.trace``, and the TorchScript-based ``torch.onnx.export``, which traces) records
tensor operations and freezes Python values: a count computed with ``min()``, or a branch on an
empty tensor, would hold the example image's value for every later image. While tracing, sizes read
from ``tensor.shape`` are 0-dim tensors; these functions keep them tensors, and otherwise run the
torchvision functions the detector has always run, so that eager inference costs what it did.

``torch.export`` (under ``torch.onnx.export(dynamo=True)``) records sizes as symbolic ints instead,
and stops at any Python branch on one whose value depends on the data (the boxes NMS keeps): there
these functions take the forms that need no such branch.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torchvision.ops import batched_nms as torchvision_batched_nms
from torchvision.ops import clip_boxes_to_image, nms


def exporting() -> bool:
    """Whether torch.export is recording the forward (sizes are symbolic ints)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # not in torch 2.4, 2.5: export falls back
    return is_exporting is not None and is_exporting()


def size_tensor(size: int | torch.Tensor | torch.SymInt, dtype: torch.dtype) -> torch.Tensor:
    """A size as a 0-dim tensor of ``dtype``: a traced 0-dim tensor converted, a symbolic int of
    torch.export taken into the graph (``torch.as_tensor`` would fix it to the example's value)."""
    if isinstance(size, torch.Tensor):
        return size.to(dtype)
    return torch.scalar_tensor(size, dtype=dtype)


def top_count(limit: int, available: int | torch.Tensor) -> int | torch.Tensor:
    """``min(limit, available)``, the k of a top-k over ``available`` values; while tracing a 0-dim
    tensor, so that the graph takes all values of a map smaller than ``limit`` at any image size
    (under torch.export the symbolic minimum, for the same reason)."""
    if torch.jit.is_tracing():
        return torch.as_tensor(available).clamp(max=limit)
    if exporting():
        return torch.sym_min(limit, available)
    return min(limit, available)


def clip_boxes(boxes: torch.Tensor, size: tuple) -> torch.Tensor:
    """torchvision's clip_boxes_to_image: (..., 4) xyxy boxes into [0, width] x [0, height] of the
    (height, width) ``size``. While tracing, the sizes are 0-dim tensors and the limits are taken
    from them in the graph (torchvision's tracing branch copies them with torch.tensor, which warns)."""
    if not torch.jit.is_tracing():
        return clip_boxes_to_image(boxes, size)
    height, width = (torch.as_tensor(side).to(boxes.dtype) for side in size)
    limits = torch.stack([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limits)


_graph_nms = contextvars.ContextVar("graph_nms", default=False)


@contextlib.contextmanager
def graph_nms():
    """Within it, the detector's NMS runs eagerly in the form its exported graph computes.

    torchvision's batched_nms, which the detector runs eagerly, takes another form for more than
    1000 boxes on CPUs (NMS group by group), where it sorts the kept boxes without stability:
    exactly tied scores (sigmoids that round to the same float) come out in an order that no
    graph reproduces, and at a top-k cut-off that order decides which boxes stay. The export's
    check compares its file with PyTorch under this."""
    token = _graph_nms.set(True)
    try:
        yield
    finally:
        _graph_nms.reset(token)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the boxes that NMS keeps within each group, best score first: torchvision's
    batched_nms.

    While tracing or exporting, and under :func:`graph_nms`, its coordinate-offset form (one NMS with each group's
    boxes shifted apart), the one torchvision itself takes while tracing, with tied scores in index
    order, but without its early return on no boxes: a trace taken on an image where a stage had no
    boxes would return nothing for every image, and one taken with boxes would fail on an image
    without any (the largest of no coordinates). A zero joins the coordinates instead; the
    detector's boxes are clipped to the image, so it never changes the largest coordinate.
    """
    # torchvision's own branch on the box count is one that torch.export cannot take on a count
    # that depends on the data.
    if not (torch.jit.is_tracing() or exporting() or _graph_nms.get()):
        return torchvision_batched_nms(boxes, scores, groups, threshold)
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, threshold)
