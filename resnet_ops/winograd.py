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
CPUs the tile transforms run as small C kernels (csrc/winograd_transforms.c, compiled on first use
by resnet_ops/native.py, registered as operators by resnet_ops/winograd_transforms.py), one pass
over memory each; where they cannot be built, as PyTorch copies and matrix products (the same
results to float rounding, slower).

The convolution is a PyTorch operator too: ``torch.ops.resnet_ops.winograd_conv3x3`` (transformed
filters, no gradients: inference), ``resnet_ops::winograd_conv2d`` (the weights themselves, with
its gradients computed in the Winograd domain as well) and ``resnet_ops::winograd_filter_grad``,
so that autograd, ``torch.compile`` and ``torch.export`` see one operator per convolution.

:class:`WinogradConv2d` replaces an ``nn.Conv2d`` and runs the Winograd convolution where it is
faster: on CPUs, for maps of at least ``min_pixels``; elsewhere (GPUs, where cuDNN chooses its own
algorithms; traced, scripted or exported graphs, which keep a convolution every runtime knows) it
is the convolution it replaces. Which convolutions are worth converting depends on the CPU: the
thresholds below are defaults measured on one machine, what was measured where is in
docs/OPERATORS.md, and the model code passes its own.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from . import winograd_transforms as c_transforms
from .registration import OPERATORS, register
from .winograd_transforms import winograd_input_tiles, winograd_output_tiles

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
# Its values, for building it inside traced graphs (a global tensor cannot enter a fake-tensor trace).
FILTER_TRANSFORM_2D_VALUES = FILTER_TRANSFORM_2D.tolist()

# Tiles per strip: about 256 keeps each strip's buffers at a few MB and the matrix products large
# enough to run at the matmul rate (on one 2-core AVX-512 CPU, 136-544 tiles were within 10%).
STRIP_TILES = 256
# Defaults of use_winograd and WinogradConv2d: which convolutions are converted. They were chosen
# on one 2-core AVX-512 CPU (docs/OPERATORS.md has what was measured there); other CPUs may gain
# from other limits, which the callers pass (test.winograd_channels, solver.winograd_channels, and
# the min_pixels keys next to them).
MIN_CHANNELS = 128  # training
INFERENCE_MIN_CHANNELS = 64
MAX_CHANNELS = 256
MIN_PIXELS = 400


def transform_filters(weight: Tensor, exact: bool = True) -> Tensor:
    """(out, in, 3, 3) filters -> (36, in, out) in the Winograd domain, ``U = G g Gt`` per channel pair.

    ``exact``: computed in float64, so that the transform adds no rounding of its own (for filters
    transformed once); else in the weights' dtype (training transforms them at every step)."""
    dtype = torch.float64 if exact else weight.dtype
    filter_2d = torch.tensor(FILTER_TRANSFORM_2D_VALUES, dtype=dtype, device=weight.device)  # (36, 9)
    flat = weight.detach().to(dtype).reshape(-1, 9)  # (out * in, 9)
    u = (flat @ filter_2d.t()).view(weight.shape[0], weight.shape[1], POSITIONS)
    return u.permute(2, 1, 0).to(weight.dtype).contiguous()


def filters_from_transformed(grad: Tensor, out_channels: int) -> Tensor:
    """The adjoint of transform_filters: (36, in, out) gradients -> (out, in, 3, 3), ``Gt dU G``."""
    filter_2d = FILTER_TRANSFORM_2D.to(grad.device, grad.dtype)
    flat = filter_2d.t() @ grad.view(POSITIONS, -1)  # (9, in * out)
    return flat.view(3, 3, -1, out_channels).permute(3, 2, 0, 1).contiguous()


def check_conv_operands(x: Tensor, filters: Tensor, bias: Tensor | None) -> None:
    """winograd_conv3x3's operands: an (N, C, H, W) map, (36, C, O) transformed filters, an (O,) bias;
    the filters' dtype is the result's (bfloat16 filters only on the CPU, with the C transforms)."""
    if x.dim() != 4:
        raise ValueError(f"winograd_conv3x3: x must be an (N, C, H, W) map; got shape {tuple(x.shape)}")
    if filters.dim() != 3 or filters.shape[0] != POSITIONS or filters.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3: filters must be (36, C, O) as transform_filters gives them, with C = "
                         f"{x.shape[1]} (x's channels); got shape {tuple(filters.shape)}")
    if bias is not None and tuple(bias.shape) != (filters.shape[2],):
        raise ValueError(f"winograd_conv3x3: bias must have shape ({filters.shape[2]},) (the filters' output "
                         f"channels); got shape {tuple(bias.shape)}")
    devices = {t.device for t in (x, filters, bias) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"winograd_conv3x3: x, filters and bias must be on one device; got {sorted(map(str, devices))}")
    if filters.dtype == torch.bfloat16:
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"winograd_conv3x3: bfloat16 filters need a float32 or bfloat16 x on the CPU; got "
                             f"{x.dtype} on {x.device}")
    elif not (x.dtype == filters.dtype and x.dtype.is_floating_point):
        raise ValueError(f"winograd_conv3x3: x and filters must have one floating dtype (or bfloat16 filters); "
                         f"got x {x.dtype} and filters {filters.dtype}")


def c_transforms_apply(x: Tensor, filters: Tensor) -> bool:
    return (x.device.type == "cpu" and filters.dtype in c_transforms.STORAGE and x.dtype in c_transforms.STORAGE
            and c_transforms.available())


def empty_result(x: Tensor, out_channels: int, dtype: torch.dtype) -> Tensor:
    """The (N, O, H, W) channels_last result of a convolution of ``x``."""
    n, _, height, width = x.shape
    return torch.empty(n, out_channels, height, width, dtype=dtype, device=x.device,
                       memory_format=torch.channels_last)


def winograd_conv3x3(x: Tensor, filters: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for 3x3 filters given as
    ``transform_filters(weight)``, then a ReLU if ``relu``; ``x`` is (N, C, H, W) in any memory
    format, the result is channels_last, in the filters' dtype (bfloat16 filters: bfloat16 storage,
    float32 transforms, a bfloat16 matrix product). No gradients: :func:`winograd_conv2d` has them.
    The operator ``torch.ops.resnet_ops.winograd_conv3x3``."""
    return torch.ops.resnet_ops.winograd_conv3x3(x, filters, bias, relu)


def conv3x3_kernel(x: Tensor, filters: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    check_conv_operands(x, filters, bias)
    if c_transforms_apply(x, filters):
        return c_winograd_conv3x3(x, filters, bias, relu)
    if filters.dtype == torch.bfloat16:
        raise RuntimeError("winograd_conv3x3: bfloat16 filters need the C transforms, which are not built here "
                           "(see the warning that said why)")
    result = pytorch_winograd_conv3x3(x, filters, bias)
    return result.relu_() if relu else result


def conv3x3_fake(x: Tensor, filters: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    check_conv_operands(x, filters, bias)
    return empty_result(x, filters.shape[2], filters.dtype)


def refuse_gradients(ctx, grad_output):
    raise RuntimeError("winograd_conv3x3 takes transformed filters and has no gradients: use winograd_conv2d, "
                       "which takes the weights")


register("winograd_conv3x3(Tensor x, Tensor filters, Tensor? bias=None, bool relu=False) -> Tensor",
         conv3x3_kernel, conv3x3_fake)
torch.library.register_autograd("resnet_ops::winograd_conv3x3", refuse_gradients, lib=OPERATORS)


def c_winograd_conv3x3(x: Tensor, filters: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """winograd_conv3x3 with the C transforms: per strip, transform, multiply, transform back straight
    into the channels_last result. The filters' dtype (float32 or bfloat16) is that of the
    transformed tiles, the products and the result; the bias stays float32."""
    dtype = filters.dtype
    # Channels innermost, as the kernels read it (a 1-channel map may keep its NCHW strides).
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    bias = None if bias is None else bias.detach().float().contiguous()
    n, channels, height, width = x.shape
    out_channels = filters.shape[2]
    tiles_h, tiles_w, rows = strip_layout(height, width)
    result = empty_result(x, out_channels, dtype)
    for image, first, count in strips(n, tiles_h, rows):
        tiles = count * tiles_w
        transformed = workspace("transformed", POSITIONS * tiles * channels, x).view(POSITIONS, tiles, channels)
        products = workspace("products", POSITIONS * tiles * out_channels, x).view(POSITIONS, tiles, out_channels)
        winograd_input_tiles(x[image].permute(1, 2, 0), first, count, tiles_w, transformed)
        torch.bmm(transformed, filters, out=products)
        winograd_output_tiles(products, bias, first, count, tiles_w, relu, result[image].permute(1, 2, 0))
    return result


def pytorch_winograd_conv3x3(x: Tensor, filters: Tensor, bias: Tensor | None) -> Tensor:
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


def check_gradient_operands(x: Tensor, grad_output: Tensor) -> None:
    if x.dim() != 4 or grad_output.dim() != 4 or x.shape[0] != grad_output.shape[0] \
            or x.shape[2:] != grad_output.shape[2:]:
        raise ValueError(f"winograd_filter_grad: x (N, C, H, W) and grad_output (N, O, H, W) must share N, H and W; "
                         f"got shapes {tuple(x.shape)} and {tuple(grad_output.shape)}")
    if x.dtype != grad_output.dtype or x.device != grad_output.device or not x.dtype.is_floating_point:
        raise ValueError(f"winograd_filter_grad: x and grad_output must have one floating dtype and one device; got "
                         f"{x.dtype} on {x.device} and {grad_output.dtype} on {grad_output.device}")


def winograd_filter_grad(x: Tensor, grad_output: Tensor) -> Tensor:
    """The gradient of the 3x3 filters of ``conv2d(x, w, padding=1)`` given the output's gradient:
    per tile position, ``dU = V^T (A dY At)`` summed over tiles, then ``Gt dU G``. The operator
    ``torch.ops.resnet_ops.winograd_filter_grad``."""
    return torch.ops.resnet_ops.winograd_filter_grad(x, grad_output)


def filter_grad_kernel(x: Tensor, grad_output: Tensor) -> Tensor:
    check_gradient_operands(x, grad_output)
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



def filter_grad_fake(x: Tensor, grad_output: Tensor) -> Tensor:
    check_gradient_operands(x, grad_output)
    return x.new_empty(grad_output.shape[1], x.shape[1], 3, 3)


register("winograd_filter_grad(Tensor x, Tensor grad_output) -> Tensor", filter_grad_kernel, filter_grad_fake)


def check_weight_operands(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"winograd_conv2d: weight must be (O, C, 3, 3) with C = x's channels; got x "
                         f"{tuple(x.shape)} and weight {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"winograd_conv2d: bias must have shape ({weight.shape[0]},); got {tuple(bias.shape)}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(f"winograd_conv2d: x and weight must have one dtype and one device; got {x.dtype} on "
                         f"{x.device} and {weight.dtype} on {weight.device}")


def winograd_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for (O, C, 3, 3) weights in the Winograd domain, with
    gradients: the input's is the Winograd convolution of the output's gradient with the flipped,
    transposed filters, the filters' is :func:`winograd_filter_grad`. The filters are transformed
    at every call, in the weights' dtype (training changes them at every step). The operator
    ``torch.ops.resnet_ops.winograd_conv2d``."""
    return torch.ops.resnet_ops.winograd_conv2d(x, weight, bias)


def conv2d_kernel(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    check_weight_operands(x, weight, bias)
    return winograd_conv3x3(x, transform_filters(weight, exact=False), bias)


def conv2d_fake(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    check_weight_operands(x, weight, bias)
    return empty_result(x, weight.shape[0], x.dtype)


def save_for_backward(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def winograd_conv2d_backward(ctx, grad_output):
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


register("winograd_conv2d(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor", conv2d_kernel, conv2d_fake)
torch.library.register_autograd("resnet_ops::winograd_conv2d", winograd_conv2d_backward,
                                setup_context=save_for_backward, lib=OPERATORS)


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

    def __init__(self, rows: int, tiles_w: int, channels: int, out_channels: int, like: Tensor):
        positions, tiles = POSITIONS, rows * tiles_w
        outputs = TILE_OUT * TILE_OUT * tiles * out_channels
        sizes = {"padded": (TILE_OUT * rows + 2) * (TILE_OUT * tiles_w + 2) * channels,
                 "tiles": positions * tiles * channels, "transformed": positions * tiles * channels,
                 "products": positions * tiles * out_channels, "outputs": outputs, "staging": outputs}
        self.storage = {name: workspace(name, size, like) for name, size in sizes.items()}
        self.channels = channels
        # The strip's input rows with the zero padding of the convolution around them.
        self.padded = self.take("padded", TILE_OUT * rows + 2, TILE_OUT * tiles_w + 2, channels)
        self.padded[:, 0].zero_()

    def take(self, name: str, *shape: int) -> Tensor:
        flat = self.storage[name]
        return flat[:math.prod(shape)].view(shape)

    def transform_input(self, image: Tensor, first: int, count: int) -> Tensor:
        """``V = Bt d B`` for the tiles of one strip of an (H, W, C) image: (36, tiles, C)."""
        if image.dtype == torch.float32 and c_transforms_apply(image, image) and c_transforms.channels_innermost(image):
            tiles_w = -(-image.shape[1] // TILE_OUT)
            transformed = self.take("transformed", POSITIONS, count * tiles_w, self.channels)
            winograd_input_tiles(image, first, count, tiles_w, transformed)
            return transformed
        tiles = self.load_tiles(image, first, count)
        transformed = self.take("transformed", POSITIONS, tiles.shape[2] * tiles.shape[3], self.channels)
        input_2d = INPUT_TRANSFORM_2D.to(image.device, image.dtype)
        torch.mm(input_2d, tiles.view(POSITIONS, -1), out=transformed.view(POSITIONS, -1))
        return transformed

    def load_tiles(self, image: Tensor, first: int, count: int) -> Tensor:
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


def direct_convolutions_chosen() -> bool:
    return getattr(SWITCH, "off", False)


def workspace(name: str, numel: int, like: Tensor) -> Tensor:
    """A flat buffer of ``numel`` elements of ``like``'s dtype and device, kept by this thread under
    ``name`` and reused by the next call. The sanitizer build gets a fresh buffer of that exact
    size every time, so that a write past its end reaches the sanitizer's guard bytes. A buffer made
    under torch.inference_mode is an inference tensor, which may not be written outside it: the two
    modes keep their own buffers."""
    if native.build_kind() == "sanitize":
        return like.new_empty(numel)
    key = (name, like.device, like.dtype, torch.is_inference_mode_enabled())
    buffers = WORKSPACES.__dict__.setdefault("buffers", {})
    if key not in buffers or buffers[key].numel() < numel:
        buffers[key] = like.new_empty(numel)
    return buffers[key][:numel]


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 nn.Conv2d that runs in the Winograd domain where that is faster:
    CPU, float32, maps of at least ``min_pixels``, not in a traced, scripted or exported graph;
    elsewhere it is the nn.Conv2d it replaces. Under bf16 autocast without gradients (inference),
    with ``bf16=True`` and the C transforms built, it runs F(4x4, 3x3) in bfloat16
    (:meth:`bf16_winograd_applies`), with about 10x the rounding error of autocast's bf16
    convolution (docs/OPERATORS.md). Inside ``torch.compile`` it is the same operators as in eager
    mode, so compiled and eager models give the same numbers.

    Same parameters and state dict as that convolution. Without gradients, the transformed filters
    are computed once and kept; a forward with gradients (training) transforms them at every step
    and drops the kept ones, as does load_state_dict. Call :meth:`refresh` after changing the
    weights in place otherwise."""

    def __init__(self, conv: nn.Conv2d, bf16: bool = True, min_pixels: int = MIN_PIXELS):
        if not is_winograd_shape(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3, stride-1, padding-1 convolution, got {conv}")
        super().__init__(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        self.bf16 = bf16
        self.min_pixels = min_pixels
        self.relu = False  # set by fuse_relu: the output is max(conv(x), 0)
        self.transformed: Tensor | None = None
        self.transformed_bf16: Tensor | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh())

    def refresh(self) -> None:
        """Forget the kept transformed filters (the next forward without gradients recomputes them)."""
        self.transformed = self.transformed_bf16 = None

    def forward(self, x: Tensor) -> Tensor:
        if self.bf16_winograd_applies(x):
            return winograd_conv3x3(x, self.kept_filters(torch.bfloat16), self.bias, self.relu)
        if not self.winograd_applies(x):
            out = super().forward(x)
            return F.relu(out, inplace=True) if self.relu else out
        if self.needs_gradients(x):
            self.refresh()  # the weights are being trained
            out = winograd_conv2d(x, self.weight, self.bias)
            return F.relu(out) if self.relu else out
        return winograd_conv3x3(x, self.kept_filters(torch.float32), self.bias, self.relu)

    def kept_filters(self, dtype: torch.dtype) -> Tensor:
        """The transformed filters in ``dtype``, computed once; within torch.compile, part of the graph."""
        if torch.compiler.is_compiling():
            return transform_filters(self.weight).to(dtype)
        kept = self.transformed if dtype == torch.float32 else self.transformed_bf16
        if kept is None or kept.device != self.weight.device:
            kept = transform_filters(self.weight).to(dtype)
            if dtype == torch.float32:
                self.transformed = kept
            else:
                self.transformed_bf16 = kept
        return kept

    def needs_gradients(self, x: Tensor) -> bool:
        parameters = [p for p in (self.weight, self.bias) if p is not None]
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in parameters))

    def winograd_applies(self, x: Tensor) -> bool:
        return (x.dtype == torch.float32 and self.weight.dtype == torch.float32 and not cpu_autocast_enabled()
                and self.shape_applies(x))

    def bf16_winograd_applies(self, x: Tensor) -> bool:
        """bf16 autocast on the CPU, no gradients, the C transforms available."""
        if not (self.bf16 and cpu_autocast_enabled() and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return False
        if self.needs_gradients(x):
            return False  # training keeps autocast's convolution
        return x.dtype in (torch.float32, torch.bfloat16) and self.shape_applies(x) and c_transforms.available()

    def shape_applies(self, x: Tensor) -> bool:
        if in_exported_graph():
            return False  # exported graphs keep the convolution, which every runtime knows
        if direct_convolutions_chosen():
            return False
        return x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] >= self.min_pixels


def in_exported_graph() -> bool:
    """Whether a TorchScript, ONNX or torch.export trace is recording the caller."""
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.6; before, export records the operator
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or (exporting is not None and exporting()))


def cpu_autocast_enabled() -> bool:
    return torch.is_autocast_enabled("cpu")


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
                 bf16: bool = True, min_pixels: int = MIN_PIXELS) -> int:
    """Replace, in place, the 3x3 stride-1 convolutions of ``model`` with between ``min_channels``
    and ``max_channels`` input and output channels by WinogradConv2d (``bf16``: also under bf16
    autocast at inference; ``min_pixels``: smaller maps keep the direct convolution); returns how
    many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (is_winograd_shape(child) and min_channels <= child.in_channels <= max_channels
                    and min_channels <= child.out_channels <= max_channels):
                setattr(parent, name, WinogradConv2d(child, bf16=bf16, min_pixels=min_pixels))
                replaced += 1
    return replaced
