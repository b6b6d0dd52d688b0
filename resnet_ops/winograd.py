"""3x3 convolutions with Winograd's minimal filtering F(4x4, 3x3): 2.25 multiplications per output
instead of 9.

A stride-1 3x3 convolution is computed on 6x6 input tiles that overlap by 2 and give 4x4 outputs
each: the tiles and the filters are moved into the Winograd domain (``V = Bt d B``, ``U = G g Gt``),
where the convolution becomes 36 independent matrix products over the channels (one per tile
position, ``M[k] = V[k] @ U[k]``), and back (``Y = At M A``). The products are a quarter of a direct
convolution's multiply-adds and run at the machine's matmul rate; the transforms are small
constant matrices. With the points 0, +-1, +-2 the results differ from a direct convolution by
float rounding (about 1e-5 relative in float32).

The image is processed in strips of tile rows, so that the transformed tiles of a strip stay in
the caches and its buffers are reused (large fresh buffers cost page faults on every call). On
CPUs the tile transforms run as small C kernels (resnet_ops/csrc/winograd_transforms.c, compiled on
first use by resnet_ops/native.py), one pass over memory each; where they cannot be built, as
PyTorch copies and matrix products (the same results to float rounding, about 1.3x slower for
256-channel maps).

On this project's 2-core CPU (oneDNN's direct convolution at about 220 GFLOP/s, matmul at 170),
with the C transforms, a convolution alone is 2.1x faster than the direct one for 256 channels on
a 152x200 map, about 2x for 128 channels on 76x100 and 1.7x for 64 channels on 152x200 (the
PyTorch transforms: 1.7x, 1.2x and slower). Inside a detector, res5's 512-channel convolutions on small
maps gained nothing (their transformed filters, 38 MB each, come from memory every time), so
:func:`use_winograd` converts the convolutions of MIN_CHANNELS to MAX_CHANNELS channels (the
inference fast path from 64) and :class:`WinogradConv2d` runs the direct one on small maps, on GPUs
(where cuDNN chooses its own algorithms) and when tracing, compiling or exporting. With gradients
(training) the backward pass is computed in the Winograd domain as well (WinogradConvFunction);
under autocast, training keeps autocast's convolution.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from . import native

# F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, 2016).
INPUT_TRANSFORM = torch.tensor([[4, 0, -5, 0, 1, 0],
                                [0, -4, -4, 1, 1, 0],
                                [0, 4, -4, -1, 1, 0],
                                [0, -2, -1, 2, 1, 0],
                                [0, 2, -1, -2, 1, 0],
                                [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
FILTER_TRANSFORM = torch.tensor([[1 / 4, 0, 0],
                                 [-1 / 6, -1 / 6, -1 / 6],
                                 [-1 / 6, 1 / 6, -1 / 6],
                                 [1 / 24, 1 / 12, 1 / 6],
                                 [1 / 24, -1 / 12, 1 / 6],
                                 [0, 0, 1]], dtype=torch.float64)
OUTPUT_TRANSFORM = torch.tensor([[1, 1, 1, 1, 1, 0],
                                 [0, 1, -1, 2, -2, 0],
                                 [0, 1, 1, 4, 4, 0],
                                 [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
TILE_IN, TILE_OUT = 6, 4
POSITIONS = TILE_IN * TILE_IN
# The 2-D transforms of a tile flattened row-major: (Bt x Bt) vec(d) = vec(Bt d B).
INPUT_TRANSFORM_2D = torch.kron(INPUT_TRANSFORM, INPUT_TRANSFORM).float()  # (36, 36)
OUTPUT_TRANSFORM_2D = torch.kron(OUTPUT_TRANSFORM, OUTPUT_TRANSFORM).float()  # (16, 36)
FILTER_TRANSFORM_2D = torch.kron(FILTER_TRANSFORM, FILTER_TRANSFORM)  # (36, 9), float64

# Tiles per strip: about 256 keeps each strip's buffers at a few MB and the matrix products large
# enough to run at the matmul rate (measured: 136-544 tiles within 10%).
STRIP_TILES = 256
# Under this, training steps gained nothing (measured with the PyTorch transforms, which the
# filters' gradient still partly uses); inference with the C transforms gains from 64 channels.
MIN_CHANNELS = 128
INFERENCE_MIN_CHANNELS = 64
# Above this, in a detector (res5's 512 channels on maps of about 25x34), the transformed filters
# (4x the weights: 38 MB per convolution) are streamed from memory for little work, and the direct
# convolution measured as fast or faster per image, with 75 MB less memory for R50-FPN.
MAX_CHANNELS = 256
MIN_PIXELS = 400


def transform_filters(weight: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """(out, in, 3, 3) filters -> (36, in, out) in the Winograd domain, ``U = G g Gt`` per channel pair.

    ``exact``: computed in float64, so that the transform adds no rounding of its own (for filters
    transformed once); else in the weights' dtype (training transforms them at every step)."""
    dtype = torch.float64 if exact else weight.dtype
    filter_2d = FILTER_TRANSFORM_2D.to(weight.device, dtype)  # (36, 9)
    flat = weight.detach().to(dtype).reshape(-1, 9)  # (out * in, 9)
    u = (flat @ filter_2d.t()).view(weight.shape[0], weight.shape[1], POSITIONS)
    return u.permute(2, 1, 0).to(weight.dtype).contiguous()


def filters_from_transformed(grad: torch.Tensor, out_channels: int) -> torch.Tensor:
    """The adjoint of transform_filters: (36, in, out) gradients -> (out, in, 3, 3), ``Gt dU G``."""
    filter_2d = FILTER_TRANSFORM_2D.to(grad.device, grad.dtype)
    flat = filter_2d.t() @ grad.view(POSITIONS, -1)  # (9, in * out)
    return flat.view(3, 3, -1, out_channels).permute(3, 2, 0, 1).contiguous()


def winograd_conv3x3(x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None = None,
                     relu: bool = False) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for 3x3 filters given as
    ``transform_filters(weight)``, then a ReLU if ``relu``; ``x`` is (N, C, H, W) in any memory
    format, the result is channels_last. No autograd (WinogradConvFunction adds it)."""
    kernels = native_transforms_for(x)
    if kernels is not None:
        return kernels.conv3x3(x, filters, bias, relu)
    result = pytorch_winograd_conv3x3(x, filters, bias)
    return result.relu_() if relu else result


def pytorch_winograd_conv3x3(x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """winograd_conv3x3 in PyTorch ops (where the C transforms cannot be built)."""
    n, channels, height, width = x.shape
    out_channels = filters.shape[2]
    tiles_h, tiles_w, rows = strip_layout(height, width)
    # An NCHW-shaped channels_last tensor, written through its NHWC view; returned itself, not as
    # a view (autograd forbids in-place changes, such as a ReLU's, to views made in a Function).
    result = torch.empty(n, out_channels, TILE_OUT * tiles_h, TILE_OUT * tiles_w, dtype=x.dtype,
                         device=x.device, memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)
    buffers = StripBuffers(rows, tiles_w, channels, out_channels, x)
    output_2d = OUTPUT_TRANSFORM_2D.to(x.device, x.dtype)
    for image, first, count in strips(n, tiles_h, rows):
        transformed = buffers.transform_input(x[image].permute(1, 2, 0), first, count)
        products = buffers.take("products", POSITIONS, count * tiles_w, out_channels)
        torch.bmm(transformed, filters, out=products)
        outputs = buffers.take("outputs", TILE_OUT, TILE_OUT, count, tiles_w, out_channels)
        torch.mm(output_2d, products.view(POSITIONS, -1), out=outputs.view(TILE_OUT * TILE_OUT, -1))
        tile_major = outputs.permute(2, 0, 3, 1, 4)
        destination = out[image, TILE_OUT * first:TILE_OUT * (first + count)]
        destination = destination.view(count, TILE_OUT, tiles_w, TILE_OUT, out_channels)
        if bias is None:
            destination.copy_(tile_major)
        else:
            torch.add(tile_major, bias, out=destination)
    if out.shape[1] != height or out.shape[2] != width:
        return result[:, :, :height, :width].contiguous(memory_format=torch.channels_last)
    return result


def winograd_filter_grad(x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient of the 3x3 filters of ``conv2d(x, w, padding=1)`` given the output's gradient:
    per tile position, ``dU = V^T (A dY At)`` summed over tiles, then ``Gt dU G``."""
    n, channels, height, width = x.shape
    out_channels = grad_output.shape[1]
    tiles_h, tiles_w, rows = strip_layout(height, width)
    buffers = StripBuffers(rows, tiles_w, channels, out_channels, x)
    grad_transformed = x.new_zeros(POSITIONS, channels, out_channels)
    output_2d_t = OUTPUT_TRANSFORM_2D.t().contiguous().to(x.device, x.dtype)
    for image, first, count in strips(n, tiles_h, rows):
        transformed = buffers.transform_input(x[image].permute(1, 2, 0), first, count)
        # The output's gradient in 4x4 tiles, zero past the image's last row and column.
        padded = buffers.take("staging", TILE_OUT * count, TILE_OUT * tiles_w, out_channels)
        rows_in_image = min(TILE_OUT * count, height - TILE_OUT * first)
        padded[rows_in_image:].zero_()  # only the last strip and maps not a multiple of 4 have any
        padded[:, width:].zero_()
        top = TILE_OUT * first
        padded[:rows_in_image, :width] = grad_output[image, :, top:top + rows_in_image].permute(1, 2, 0)
        grad_tiles = buffers.take("outputs", TILE_OUT, TILE_OUT, count, tiles_w, out_channels)
        grad_tiles.copy_(padded.view(count, TILE_OUT, tiles_w, TILE_OUT, out_channels).permute(1, 3, 0, 2, 4))
        grad_products = buffers.take("products", POSITIONS, count * tiles_w, out_channels)
        torch.mm(output_2d_t, grad_tiles.view(TILE_OUT * TILE_OUT, -1), out=grad_products.view(POSITIONS, -1))
        grad_transformed.baddbmm_(transformed.transpose(1, 2), grad_products)
    return filters_from_transformed(grad_transformed, out_channels)


def strip_layout(height: int, width: int) -> tuple[int, int, int]:
    """Tile rows, tile columns, and tile rows per strip for a height x width map."""
    tiles_h, tiles_w = -(-height // TILE_OUT), -(-width // TILE_OUT)
    return tiles_h, tiles_w, max(1, min(tiles_h, STRIP_TILES // tiles_w))


def strips(images: int, tiles_h: int, rows: int):
    """(image, first tile row, tile rows) of every strip."""
    for image in range(images):
        for first in range(0, tiles_h, rows):
            yield image, first, min(rows, tiles_h - first)


class StripBuffers:
    """The per-strip work buffers of winograd_conv3x3, sized for a full strip and viewed at the size
    of each strip (the last one may be shorter). Their memory is kept between calls, per thread:
    fresh multi-MB buffers on every call cost as much in page faults as the transforms themselves."""

    def __init__(self, rows: int, tiles_w: int, channels: int, out_channels: int, like: torch.Tensor):
        positions, tiles = POSITIONS, rows * tiles_w
        outputs = TILE_OUT * TILE_OUT * tiles * out_channels
        sizes = {"padded": (TILE_OUT * rows + 2) * (TILE_OUT * tiles_w + 2) * channels,
                 "tiles": positions * tiles * channels, "transformed": positions * tiles * channels,
                 "products": positions * tiles * out_channels, "outputs": outputs, "staging": outputs}
        memory = workspace(sum(sizes.values()), like)
        self.storage, offset = {}, 0
        for name, size in sizes.items():
            self.storage[name] = memory[offset:offset + size]
            offset += size
        self.channels = channels
        # The strip's input rows with the zero padding of the convolution around them.
        self.padded = self.take("padded", TILE_OUT * rows + 2, TILE_OUT * tiles_w + 2, channels)
        self.padded[:, 0].zero_()

    def take(self, name: str, *shape: int) -> torch.Tensor:
        flat = self.storage[name]
        return flat[:math.prod(shape)].view(shape)

    def transform_input(self, image: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """``V = Bt d B`` for the tiles of one strip of an (H, W, C) image: (36, tiles, C)."""
        kernels = native_transforms_for(image)
        if kernels is not None and channels_innermost(image):
            tiles_w = -(-image.shape[1] // TILE_OUT)
            transformed = self.take("transformed", POSITIONS, count * tiles_w, self.channels)
            kernels.input_tiles(image, first, count, tiles_w, transformed)
            return transformed
        tiles = self.load_tiles(image, first, count)
        transformed = self.take("transformed", POSITIONS, tiles.shape[2] * tiles.shape[3], self.channels)
        input_2d = INPUT_TRANSFORM_2D.to(image.device, image.dtype)
        torch.mm(input_2d, tiles.view(POSITIONS, -1), out=transformed.view(POSITIONS, -1))
        return transformed

    def load_tiles(self, image: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """The 6x6 tiles of tile rows [first, first + count) of one (H, W, C) image, as
        (6, 6, count, tiles_w, C): tile (t, s) element (i, j) is input pixel (4t + i - 1, 4s + j - 1)."""
        height, width = image.shape[:2]
        top = TILE_OUT * first - 1  # image row of the strip's first padded row
        rows_needed = TILE_OUT * count + 2
        start, stop = max(top, 0), min(top + rows_needed, height)
        padded = self.padded[:rows_needed]
        padded[start - top:stop - top, 1:width + 1] = image[start:stop]
        padded[:, width + 1:].zero_()  # right padding (and the columns past the image's last tile)
        # Rows outside the image are zero padding (the buffer is reused, so clear them every time).
        padded[:start - top].zero_()
        padded[stop - top:].zero_()
        stride_h, stride_w, stride_c = padded.stride()
        tiles_w = (padded.shape[1] - 2) // TILE_OUT
        shape = (TILE_IN, TILE_IN, count, tiles_w, self.channels)
        strides = (stride_h, stride_w, TILE_OUT * stride_h, TILE_OUT * stride_w, stride_c)
        view = padded.as_strided(shape, strides, padded.storage_offset())
        return self.take("tiles", *shape).copy_(view)


class NativeTransforms:
    """The tile transforms of csrc/winograd_transforms.c through ctypes: channels innermost, float32
    or bfloat16 storage (float32 arithmetic)."""

    STORAGE = {torch.float32: 0, torch.bfloat16: 1}

    def __init__(self, library):
        pointer, long, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        self.input_transform = library.winograd_input_transform
        self.input_transform.argtypes = [pointer, int_, long, long, int_, int_, int_, int_, int_, int_, pointer,
                                         int_, int_]
        self.input_transform.restype = None
        self.output_transform = library.winograd_output_transform
        self.output_transform.argtypes = [pointer, int_, pointer, int_, int_, int_, int_, int_, pointer, int_, long,
                                          long, int_, int_, int_]
        self.output_transform.restype = None

    def input_tiles(self, image: torch.Tensor, first: int, count: int, tiles_w: int, out: torch.Tensor) -> None:
        """``V = Bt d B`` of tile rows [first, first + count) of an (H, W, C) image with unit channel
        stride, into ``out``: (36, count * tiles_w, C), contiguous."""
        check_kernel_operand("image", image)
        height, width, channels = image.shape
        check_kernel_operand("transformed tiles", out, (POSITIONS, count * tiles_w, channels), contiguous=True)
        self.input_transform(image.data_ptr(), self.STORAGE[image.dtype], image.stride(0), image.stride(1), height,
                             width, channels, first, count, tiles_w, out.data_ptr(), self.STORAGE[out.dtype],
                             torch.get_num_threads())

    def output_tiles(self, products: torch.Tensor, bias: torch.Tensor | None, first: int, count: int,
                     tiles_w: int, out: torch.Tensor, relu: bool = False) -> None:
        """``Y = At M A`` (+ bias, then ReLU if ``relu``) of (36, count * tiles_w, O) products, written
        into the pixels of tile rows [first, first + count) of an (H, W, O) output with unit channel stride."""
        check_kernel_operand("output", out)
        height, width, channels = out.shape
        check_kernel_operand("products", products, (POSITIONS, count * tiles_w, channels), contiguous=True)
        if bias is not None:
            check_kernel_operand("bias", bias, (channels,), contiguous=True, dtypes=(torch.float32,))
        self.output_transform(products.data_ptr(), self.STORAGE[products.dtype],
                              None if bias is None else bias.data_ptr(), int(relu), channels, first, count, tiles_w,
                              out.data_ptr(), self.STORAGE[out.dtype], out.stride(0), out.stride(1), height, width,
                              torch.get_num_threads())

    def conv3x3(self, x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None,
                relu: bool = False) -> torch.Tensor:
        """winograd_conv3x3 with these transforms: per strip, transform, multiply, transform back
        straight into the channels_last result. The filters' dtype (float32 or bfloat16) is that of
        the transformed tiles, the products and the result; the bias stays float32."""
        dtype = filters.dtype
        # Channels innermost, as the kernels read it (a 1-channel map may keep its NCHW strides).
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        filters = filters.contiguous()
        bias = None if bias is None else bias.detach().float().contiguous()
        n, channels, height, width = x.shape
        out_channels = filters.shape[2]
        tiles_h, tiles_w, rows = strip_layout(height, width)
        result = torch.empty(n, out_channels, height, width, dtype=dtype, device=x.device,
                             memory_format=torch.channels_last)
        strip_tiles = rows * tiles_w
        memory = workspace(POSITIONS * strip_tiles * (channels + out_channels), x)
        for image, first, count in strips(n, tiles_h, rows):
            tiles = count * tiles_w
            transformed = memory[:POSITIONS * tiles * channels].view(POSITIONS, tiles, channels)
            products = memory[POSITIONS * strip_tiles * channels:][:POSITIONS * tiles * out_channels]
            products = products.view(POSITIONS, tiles, out_channels)
            self.input_tiles(x[image].permute(1, 2, 0), first, count, tiles_w, transformed)
            torch.bmm(transformed, filters, out=products)
            self.output_tiles(products, bias, first, count, tiles_w, result[image].permute(1, 2, 0), relu)
        return result


def channels_innermost(image: torch.Tensor) -> bool:
    """Whether an (H, W, C) view has the C transforms' layout: unit channel stride, or one channel
    (its stride is never used; PyTorch counts a 1-channel NCHW map as channels_last as it is)."""
    return image.shape[-1] == 1 or image.stride(-1) == 1


def check_kernel_operand(name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None = None,
                         contiguous: bool = False, dtypes: tuple[torch.dtype, ...] = tuple(NativeTransforms.STORAGE)):
    """Refuse what the C transforms cannot read or write: they take raw CPU pointers, so a wrong
    layout, dtype or size would read or write the wrong memory instead of failing."""
    layout_ok = tensor.is_contiguous() if contiguous else tensor.dim() == 3 and channels_innermost(tensor)
    if (tensor.device.type != "cpu" or tensor.dtype not in dtypes or not layout_ok
            or (shape is not None and tuple(tensor.shape) != shape)):
        layout = "contiguous" if contiguous else "(H, W, C) with unit channel stride"
        expected = f"shape {shape}, " if shape is not None else ""
        raise ValueError(f"Winograd C transforms: the {name} must be a CPU tensor, {expected}{layout}, of "
                         f"{' or '.join(str(d) for d in dtypes)}; got shape {tuple(tensor.shape)}, strides "
                         f"{tensor.stride()}, {tensor.dtype} on {tensor.device}")


NATIVE: dict[str, NativeTransforms | None] = {}


def native_transforms() -> NativeTransforms | None:
    """The C tile transforms, or None where they cannot be built (or RESNET_DETECTION_NATIVE=0)."""
    if "transforms" not in NATIVE:
        library = native.load_library("winograd_transforms")
        NATIVE["transforms"] = None if library is None else NativeTransforms(library)
    return NATIVE["transforms"]


def native_transforms_for(x: torch.Tensor) -> NativeTransforms | None:
    """The C transforms for a float32 CPU tensor (the float32 paths), else None."""
    return native_transforms() if x.device.type == "cpu" and x.dtype == torch.float32 else None


WORKSPACES = threading.local()
SWITCH = threading.local()


@contextlib.contextmanager
def direct_convolutions():
    """Within this context (in this thread), WinogradConv2d runs as the plain convolution: to count
    a model's nominal FLOPs, or to compare against the direct convolution."""
    previous = getattr(SWITCH, "off", False)
    SWITCH.off = True
    try:
        yield
    finally:
        SWITCH.off = previous


def workspace(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat buffer of at least ``numel`` elements of ``like``'s dtype and device, reused by this thread."""
    key = (like.device, like.dtype)
    buffers = WORKSPACES.__dict__.setdefault("buffers", {})
    if key not in buffers or buffers[key].numel() < numel:
        buffers[key] = like.new_empty(numel)
    return buffers[key][:numel]


class WinogradConvFunction(torch.autograd.Function):
    """winograd_conv3x3 with its gradients, also computed in the Winograd domain: the input's
    gradient is the convolution of the output's gradient with the flipped, transposed filters, and
    the filters' gradient is ``Gt (sum over tiles of V^T (A dY At)) G``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return winograd_conv3x3(x, transform_filters(weight, exact=False), bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3).transpose(0, 1)
            grad_x = winograd_conv3x3(grad_output, transform_filters(flipped, exact=False))
        if ctx.needs_input_grad[1]:
            grad_weight = winograd_filter_grad(x, grad_output)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 nn.Conv2d that runs in the Winograd domain where that is faster:
    CPU, float32, maps of at least MIN_PIXELS, not tracing or exporting; elsewhere it is the
    nn.Conv2d it replaces. Under bf16 autocast without gradients (inference), with ``bf16=True`` and
    the C transforms built, it runs F(4x4, 3x3) in bfloat16 (:func:`bf16_winograd_applies`): about
    2.7x faster than oneDNN's bf16 convolution here, with 10x its rounding error (3% of the output's
    norm against 0.3%); docs/BENCHMARKS.md measures the detectors' AP change.

    Same parameters and state dict as that convolution. Without gradients, the transformed filters
    are computed once and kept; a forward with gradients (training) transforms them at every step
    and drops the kept ones, as does load_state_dict. Call :meth:`refresh` after changing the
    weights in place otherwise."""

    def __init__(self, conv: nn.Conv2d, bf16: bool = True):
        if not is_winograd_shape(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3, stride-1, padding-1 convolution, got {conv}")
        super().__init__(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        self.bf16 = bf16
        self.relu = False  # set by fuse_relu: the output is max(conv(x), 0)
        self.transformed: torch.Tensor | None = None
        self.transformed_bf16: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh())

    def refresh(self) -> None:
        """Forget the kept transformed filters (the next forward without gradients recomputes them)."""
        self.transformed = self.transformed_bf16 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16_winograd_applies(x):
            if self.transformed_bf16 is None or self.transformed_bf16.device != x.device:
                self.transformed_bf16 = transform_filters(self.weight).to(torch.bfloat16)
            return native_transforms().conv3x3(x, self.transformed_bf16, self.bias, relu=self.relu)
        if not self.winograd_applies(x):
            out = super().forward(x)
            return F.relu(out, inplace=True) if self.relu else out
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            self.transformed = None  # the weights are being trained
            out = WinogradConvFunction.apply(x, self.weight, self.bias)
            return F.relu(out) if self.relu else out
        if self.transformed is None or self.transformed.device != x.device:
            self.transformed = transform_filters(self.weight)
        return winograd_conv3x3(x, self.transformed, self.bias, relu=self.relu)

    def winograd_applies(self, x: torch.Tensor) -> bool:
        return (x.dtype == torch.float32 and self.weight.dtype == torch.float32 and not cpu_autocast_enabled()
                and self.shape_applies(x))

    def bf16_winograd_applies(self, x: torch.Tensor) -> bool:
        """bf16 autocast on the CPU, no gradients, the C transforms available."""
        if not (self.bf16 and cpu_autocast_enabled() and cpu_autocast_dtype() == torch.bfloat16):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False  # training keeps autocast's convolution
        return (x.dtype in (torch.float32, torch.bfloat16) and self.shape_applies(x)
                and native_transforms() is not None)

    def shape_applies(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or compiling():
            return False  # graphs keep the convolution (sizes are symbolic there)
        if getattr(SWITCH, "off", False):
            return False
        return x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] >= MIN_PIXELS


def compiling() -> bool:
    """Whether torch.compile is tracing the caller (it then chooses its own convolution algorithms)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def cpu_autocast_dtype() -> torch.dtype:
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


def is_winograd_shape(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def fuse_relu(parent: nn.Module, conv_name: str, relu_name: str) -> bool:
    """Let ``parent.<conv_name>``, a WinogradConv2d, apply the ReLU ``parent.<relu_name>`` that follows
    it (in its output transform: one pass over the map less) and replace that ReLU by nn.Identity;
    returns whether it did. Only for a ReLU that directly follows the convolution in the parent's
    forward (nothing in between, such as an unfolded BatchNorm: the caller checks)."""
    conv, relu = getattr(parent, conv_name, None), getattr(parent, relu_name, None)
    if not (isinstance(conv, WinogradConv2d) and type(relu) is nn.ReLU):
        return False
    conv.relu = True
    setattr(parent, relu_name, nn.Identity())
    return True


def use_winograd(model: nn.Module, min_channels: int = MIN_CHANNELS, max_channels: int = MAX_CHANNELS,
                 bf16: bool = True) -> int:
    """Replace, in place, the 3x3 stride-1 convolutions of ``model`` with between ``min_channels``
    and ``max_channels`` input and output channels by WinogradConv2d (``bf16``: also under bf16
    autocast at inference); returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (is_winograd_shape(child) and min_channels <= child.in_channels <= max_channels
                    and min_channels <= child.out_channels <= max_channels):
                setattr(parent, name, WinogradConv2d(child, bf16=bf16))
                replaced += 1
    return replaced
