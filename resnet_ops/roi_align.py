"""RoIAlign as a weighted gather: the same numbers as torchvision.ops.roi_align, many times faster on CPUs.

torchvision's CPU kernel walks one RoI and one channel at a time on a single thread, and its
backward is slower still: in a CPU training step of a light-head detector it is a quarter of the
time, and at inference on 1000 proposals it rivals the backbone's largest convolutions. Yet every
output value of RoIAlign is a fixed weighted sum of feature-map pixels: each bin averages S
bilinear samples of 4 taps each. Written that way, one ``torch.nn.functional.embedding_bag`` call
(mode "sum" with per-sample weights) over the feature map seen as a (B*H*W, C) table computes
all bins of all RoIs, on every thread, reading whole channel vectors at once when the map is
channels_last. Its backward is the matching scatter-add, also multi-threaded. bf16 works too,
which torchvision's CPU kernel refuses.

The sample positions, the border rules (samples more than one pixel outside the map count as
zero, others are clamped), ``aligned`` and the adaptive sampling ratio follow torchvision's
kernel, so results agree with it to float rounding (tested against it, forward and backward).
On CUDA, and while tracing, scripting or exporting, torchvision's op runs instead.
"""

import math

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function_unary
from torchvision.ops import roi_align as torchvision_roi_align

from .winograd import in_exported_graph

# Annotations are evaluated here (no ``from __future__ import annotations``): TorchScript reads the
# signatures of the functions it skips (torch.jit.unused) from objects, not from strings.

IMPLEMENTATIONS = ("auto", "gather", "torchvision")


def boxes_to_rois(boxes: torch.Tensor | list[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Per-image (K_i, 4) boxes -> one (K, 5) tensor of (image index, x1, y1, x2, y2); a (K, 5)
    tensor is returned as it is. Other shapes are refused (a (K, 4) tensor would otherwise read
    x1 as the image index). An empty list (no images) gives no RoIs, in ``features``' dtype."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"roi_align: a boxes tensor must be (K, 5) rows of (image index, x1, y1, x2, "
                             f"y2), got shape {list(boxes.shape)}; give per-image (K_i, 4) boxes as a list")
        return boxes
    for image, image_boxes in enumerate(boxes):
        if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            raise ValueError(f"roi_align: the boxes of image {image} must be (K, 4) rows of (x1, y1, x2, "
                             f"y2), got shape {list(image_boxes.shape)}")
    if len(boxes) == 0:
        return features.new_zeros((0, 5))
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)


@torch.jit.unused
def use_gather(features: torch.Tensor, impl: str) -> bool:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"roi_align impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "torchvision" or in_exported_graph():
        return False
    return impl == "gather" or features.device.type == "cpu"


@torch.jit.unused
def recording_graph() -> bool:
    """:func:`resnet_ops.winograd.in_exported_graph`, out of TorchScript's sight (it cannot compile it)."""
    return in_exported_graph()


def roi_align(features: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor], output_size: int,
              spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
              impl: str = "auto") -> torch.Tensor:
    """(N, C, P, P) RoIAlign of ``boxes`` (per-image list of xyxy, or (N, 5) rois) on (B, C, H, W) ``features``.

    ``impl``: "auto" (the gather on CPU, torchvision elsewhere), "gather" or "torchvision". The
    gather's result is a channels_last view; ``.contiguous()`` or ``.flatten(1)`` make it NCHW.
    Like torchvision's op, no gradient flows into the boxes. Scripted, it is torchvision's op;
    torch.fx records it as one call (box counts are data, which symbolic tracing cannot follow).
    """
    if has_torch_function_unary(features):  # an fx Proxy (or another tensor-like type) takes over
        return handle_torch_function(roi_align, (features,), features, boxes, output_size, spatial_scale,
                                     sampling_ratio=sampling_ratio, aligned=aligned, impl=impl)
    rois = boxes_to_rois(boxes, features)
    if torch.jit.is_scripting() or not use_gather(features, impl):
        return torchvision_roi_align(features, rois.to(features.dtype), output_size, spatial_scale,
                                     sampling_ratio, aligned)
    return gather_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


@torch.jit.unused
def gather_roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                     sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """roi_align as embedding_bag calls over the (B*H*W, C) table of the feature map."""
    batch, channels, height, width = features.shape
    # (B*H*W, C): a free view when the map is channels_last, one copy otherwise.
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    # Positions and weights in float64 for float64 maps (float32 would move samples across the
    # borders), else in float32; detached: torchvision's op gives the boxes no gradient either.
    rois = rois.detach().to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    bins = rois.shape[0] * output_size * output_size
    # A fixed sampling ratio is one group of all RoIs. Adaptive ones fill, group by group, an
    # output of empty bags: zeros that RoIs without samples keep, computed by the gather so that
    # the output always has its gradient function (zero for those RoIs).
    out = None if sampling_ratio > 0 else empty_bags(bins, table)
    for group, taps, weights in bilinear_taps(rois, height, width, output_size, spatial_scale, sampling_ratio,
                                              aligned):
        pooled = F.embedding_bag(taps, table, per_sample_weights=weights.to(table.dtype), mode="sum")
        if out is None:
            out = pooled
        else:
            out.view(-1, output_size * output_size, channels).index_copy_(
                0, group, pooled.view(-1, output_size * output_size, channels))
    return out.view(-1, output_size, output_size, channels).permute(0, 3, 1, 2)


def empty_bags(count: int, table: torch.Tensor) -> torch.Tensor:
    """(count, C) zeros as the sums of ``count`` empty bags of ``table``."""
    no_taps = torch.zeros(0, dtype=torch.long, device=table.device)
    offsets = torch.zeros(count, dtype=torch.long, device=table.device)
    return F.embedding_bag(no_taps, table, offsets, per_sample_weights=table.new_zeros(0), mode="sum")


def bilinear_taps(rois: torch.Tensor, height, width, output_size: int, spatial_scale, sampling_ratio: int,
                  aligned: bool, table_start=0):
    """Yield (RoI indices or None for all, taps (n*P*P, T) into the (B*H*W) table, weights (n*P*P, T)).

    With an adaptive sampling ratio (<= 0) RoIs are grouped by their sample grid, so that each
    group has one bag size; RoIs with no samples (empty boxes) are in no group. With a fixed one,
    ``height``, ``width`` ((n, 1, 1) int64), ``spatial_scale`` and ``table_start`` ((n,)) may be given
    per RoI instead: RoIs that sample maps of several sizes stored one after the other in one table.
    """
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # the legacy op makes every RoI at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    if sampling_ratio > 0:
        yield None, *_taps(rois, x1, y1, bin_w, bin_h, sampling_ratio, sampling_ratio, height, width, output_size,
                           table_start)
        return
    grid_h = torch.ceil(roi_h / output_size).long()
    grid_w = torch.ceil(roi_w / output_size).long()
    for gh, gw in torch.unique(torch.stack([grid_h, grid_w], 1), dim=0).tolist():
        if gh <= 0 or gw <= 0:
            continue
        group = torch.nonzero((grid_h == gh) & (grid_w == gw)).squeeze(1)
        yield group, *_taps(rois[group], x1[group], y1[group], bin_w[group], bin_h[group], gh, gw, height, width,
                            output_size)


def _taps(rois, x1, y1, bin_w, bin_h, grid_h: int, grid_w: int, height, width, output_size: int, table_start=0):
    """Taps and weights of RoIs that share one sample grid (grid_h x grid_w samples per bin); the map's
    ``height``, ``width`` and first row in the table ``table_start`` as bilinear_taps takes them."""
    bins = torch.arange(output_size, dtype=rois.dtype, device=rois.device)
    # Sample positions, (n, P, grid), in torchvision's order of operations.
    ys = _positions(y1, bin_h, bins, grid_h)
    xs = _positions(x1, bin_w, bins, grid_w)
    y_lo, y_hi, wy_lo, wy_hi = _axis_taps(ys, height)
    x_lo, x_hi, wx_lo, wx_hi = _axis_taps(xs, width)
    # Rows and columns of the four taps of each sample: (n, P, grid, 2).
    rows, row_w = torch.stack([y_lo, y_hi], -1), torch.stack([wy_lo, wy_hi], -1)
    cols, col_w = torch.stack([x_lo, x_hi], -1), torch.stack([wx_lo, wx_hi], -1)
    row_length = width.view(-1, 1, 1, 1, 1, 1, 1) if isinstance(width, torch.Tensor) else width
    # Outer product over (bin row, bin col, sample row, sample col, tap row, tap col).
    taps = rows[:, :, None, :, None, :, None] * row_length + cols[:, None, :, None, :, None, :]
    weights = row_w[:, :, None, :, None, :, None] * col_w[:, None, :, None, :, None, :] / (grid_h * grid_w)
    plane = height * width  # the pixels of one image's map
    image_offset = rois[:, 0].long() * (plane.view(-1) if isinstance(plane, torch.Tensor) else plane) + table_start
    taps = taps + image_offset.view(-1, 1, 1, 1, 1, 1, 1)
    count, per_bin = rois.shape[0] * output_size * output_size, grid_h * grid_w * 4
    return taps.reshape(count, per_bin), weights.reshape(count, per_bin)


def _positions(start: torch.Tensor, bin_size: torch.Tensor, bins: torch.Tensor, grid: int) -> torch.Tensor:
    samples = torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5
    return (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
            + samples[None, None, :] * bin_size[:, None, None] / grid)


def _axis_taps(coords: torch.Tensor, size):
    """Low/high pixel indices and their weights along one axis, with torchvision's border rules.
    ``size``: an int, or one per RoI as an (n, 1, 1) int64 tensor."""
    inside = ((coords >= -1.0) & (coords <= size)).to(coords.dtype)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    coords = torch.where(at_edge, low.to(coords.dtype), coords)
    frac = coords - low.to(coords.dtype)
    return low, high, (1.0 - frac) * inside, frac * inside


def fpn_levels(boxes: torch.Tensor, strides: list[int]) -> torch.Tensor:
    """The pyramid level index (0 = finest of ``strides``) of each (N, 4) box, FPN paper eq. 1, or
    -1 for a box with no size (negative width or height, or NaN coordinates).

    The canonical ImageNet size 224 maps to level 4 (stride 16), with torchvision's epsilon, so
    that imported torchvision detectors pool each box from the same level.
    """
    level_min, level_max = power_of_two(strides[0]), power_of_two(strides[-1])
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # NaN for a negative area
    levels = torch.floor(4 + torch.log2(sizes / 224) + 1e-6).clamp(level_min, level_max) - level_min
    # NaN has no integer value (the conversion is undefined): mark those boxes explicitly.
    return torch.where(torch.isnan(levels), torch.full_like(levels, -1.0), levels).long()


@torch.jit.unused
def one_table_roi_align(features: list[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor, strides: list[int],
                        output_size: int, sampling_ratio: int) -> torch.Tensor:
    """multiscale_roi_align's gather in one embedding_bag call over one table of every level's pixels,
    each RoI tapping its own level's rows. Splitting the RoIs by level takes a ``nonzero`` per level,
    each a device-to-host sync (how many RoIs a level has is data), and a call per level; here no
    shape depends on the data, so a training step stays free of syncs and capturable. Each RoI's taps
    and weights are those of the per-level call, so the values are the same. The cost: one copy of the
    pyramid into the table (a view per level otherwise, for channels_last maps). A fixed sampling ratio
    only: adaptive ones group RoIs by their sample grid, another data-dependent split."""
    channels = features[0].shape[1]
    # (sum of B*H*W over the levels, C): a map's pixels from its level's start row on.
    table = torch.cat([feature.permute(0, 2, 3, 1).reshape(-1, channels) for feature in features])
    sizes = [feature.shape[0] * feature.shape[2] * feature.shape[3] for feature in features]
    device = rois.device
    starts = torch.tensor([sum(sizes[:level]) for level in range(len(sizes))], device=device)
    heights = torch.tensor([feature.shape[2] for feature in features], device=device)
    widths = torch.tensor([feature.shape[3] for feature in features], device=device)
    rois = rois.detach().to(torch.float64 if table.dtype == torch.float64 else torch.float32)
    scales = torch.tensor([1.0 / stride for stride in strides], dtype=rois.dtype, device=device)
    # A RoI of no level (no size, NaN) samples level 0 at a zero box with zero weights: zeros, as
    # the per-level path writes for it, and no NaN taps.
    has_level = levels >= 0
    level = levels.clamp(min=0)
    rois = torch.where(has_level[:, None], rois, torch.zeros_like(rois))
    # The legacy (not pixel-aligned) sampling of FPN poolers, each RoI with its level's map.
    _, taps, weights = next(bilinear_taps(rois, heights[level].view(-1, 1, 1), widths[level].view(-1, 1, 1),
                                          output_size, scales[level], sampling_ratio, False, starts[level]))
    weights = weights * has_level.repeat_interleave(output_size * output_size)[:, None].to(weights.dtype)
    pooled = F.embedding_bag(taps, table, per_sample_weights=weights.to(table.dtype), mode="sum")
    return pooled.view(-1, output_size, output_size, channels).permute(0, 3, 1, 2)


def power_of_two(stride: int) -> float:
    """k for a stride of 2**k, exactly (TorchScript has no math.log2, and log(s) / log(2) is rounded)."""
    return float(round(math.log(stride) / math.log(2.0)))


def multiscale_roi_align(features: list[torch.Tensor], boxes: torch.Tensor | list[torch.Tensor],
                         strides: list[int], output_size: int, sampling_ratio: int,
                         impl: str = "auto") -> torch.Tensor:
    """RoIAlign of each box on the pyramid level its size selects; (N, C, P, P) in the boxes' order.

    Legacy (not pixel-aligned) sampling, as torchvision's MultiScaleRoIAlign; like it, a box with
    no level (:func:`fpn_levels`) gives zeros. One call in torch.fx graphs, as roi_align.
    """
    if has_torch_function_unary(features[0]):
        return handle_torch_function(multiscale_roi_align, (features[0],), features, boxes, strides,
                                     output_size, sampling_ratio, impl=impl)
    rois = boxes_to_rois(boxes, features[0])
    levels = fpn_levels(rois[:, 1:], strides)
    first = features[0]
    gather = not torch.jit.is_scripting() and use_gather(first, impl)
    if gather and sampling_ratio > 0:
        return one_table_roi_align(features, rois, levels, strides, output_size, sampling_ratio)
    # Filled as (N, P, P, C) by the gather and returned as a channels_last view of (N, C, P, P).
    shape = [rois.shape[0], output_size, output_size, first.shape[1]] if gather else \
        [rois.shape[0], first.shape[1], output_size, output_size]
    out = first.new_empty(shape)  # each row is written below: by its level, or with zeros
    # A recorded graph pools every level: the boxes of each are data, and a level skipped while
    # recording would be skipped for every input.
    in_graph = not torch.jit.is_scripting() and recording_graph()
    for level, feature in enumerate(features):
        index = torch.nonzero(levels == level).squeeze(1)
        if not in_graph and index.numel() == 0:
            continue
        pooled = roi_align(feature, rois[index], output_size, 1.0 / strides[level], sampling_ratio,
                           aligned=False, impl=impl)
        out.index_copy_(0, index, pooled.permute(0, 2, 3, 1) if gather else pooled.to(out.dtype))
    out.index_fill_(0, torch.nonzero(levels < 0).squeeze(1), 0.0)
    return out.permute(0, 3, 1, 2) if gather else out
