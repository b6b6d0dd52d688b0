"""The C tile transforms of the Winograd convolution (csrc/winograd_transforms.c) as PyTorch operators.

``torch.ops.resnet_ops.winograd_input_tiles`` and ``torch.ops.resnet_ops.winograd_output_tiles``
are registered with ``torch.library`` (resnet_ops/registration.py): the dispatcher,
``torch.compile`` and ``torch.export`` see operators instead of foreign calls. Both write into a
tensor given to them (``out``), as the convolution reuses its work buffers between calls.

The kernels take raw pointers, so every operand is checked here first, with an exception that
names it (device, dtype, rank, shape, strides, index ranges): a wrong tensor must fail, not read or
write the wrong memory. The C functions check again that their sizes fit the buffers they are
given and return a status, for callers other than these.
"""

from __future__ import annotations

import ctypes
import threading

import torch
from torch import Tensor

from . import native
from .registration import register

POSITIONS = 36  # 6x6 positions of a tile in the Winograd domain
STORAGE = {torch.float32: 0, torch.bfloat16: 1}  # the C kernels' storage flags
INT_LIMIT = (2**31 - 1 - 8) // 4  # tile indices whose pixel coordinates fit a C int
STATUSES = {1: "a size or tile index is out of range", 2: "the source extends past its buffer",
            3: "the destination extends past its buffer", 4: "the bias is shorter than the channels"}

LOCK = threading.Lock()
LOADED: dict[str, ctypes.CDLL | None] = {}


def c_library() -> ctypes.CDLL | None:
    """The compiled transforms with their C signatures, or None where they cannot be built."""
    if "transforms" in LOADED:  # without the lock: torch.compile reads this as a constant
        return LOADED["transforms"]
    with LOCK:
        if "transforms" not in LOADED:
            LOADED["transforms"] = bind(native.load_library("winograd_transforms"))
        return LOADED["transforms"]


def bind(library: ctypes.CDLL | None) -> ctypes.CDLL | None:
    if library is None:
        return None
    pointer, long, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    library.winograd_input_transform.argtypes = [pointer, long, int_, long, long, int_, int_, int_, int_, int_,
                                                 int_, pointer, long, int_, int_]
    library.winograd_input_transform.restype = int_
    library.winograd_output_transform.argtypes = [pointer, long, int_, pointer, long, int_, int_, int_, int_, int_,
                                                  pointer, long, int_, long, long, int_, int_, int_]
    library.winograd_output_transform.restype = int_
    return library


def available() -> bool:
    """Whether the C transforms are built (False without a compiler or with RESNET_DETECTION_NATIVE=0)."""
    return c_library() is not None


def describe(tensor: Tensor) -> str:
    return f"shape {tuple(tensor.shape)}, strides {tensor.stride()}, {tensor.dtype} on {tensor.device}"


def refuse(name: str, requirement: str, tensor: Tensor) -> None:
    raise ValueError(f"Winograd C transforms: the {name} must be {requirement}; got {describe(tensor)}")


def check_storage(name: str, tensor: Tensor, dtypes: tuple[torch.dtype, ...] = tuple(STORAGE)) -> None:
    if tensor.device.type != "cpu":
        refuse(name, "a CPU tensor", tensor)
    if tensor.dtype not in dtypes:
        refuse(name, f"of {' or '.join(str(d) for d in dtypes)}", tensor)


def channels_innermost(image: Tensor) -> bool:
    """Whether an (H, W, C) view has the C transforms' layout: unit channel stride, or one channel
    (its stride is never used; PyTorch counts a 1-channel NCHW map as channels_last as it is)."""
    return image.shape[-1] == 1 or image.stride(-1) == 1


def check_map(name: str, tensor: Tensor, written: bool = False) -> None:
    """An (H, W, C) map with unit channel stride, no size 0 and sizes a C int holds; a map that is
    written must not overlap itself (the tiles are written by several threads)."""
    check_storage(name, tensor)
    if tensor.dim() != 3 or not channels_innermost(tensor):
        refuse(name, "an (H, W, C) map with unit channel stride", tensor)
    if min(tensor.shape) < 1 or max(tensor.shape) > INT_LIMIT:
        refuse(name, f"a map of 1 to {INT_LIMIT} pixels and channels per side", tensor)
    if written and overlaps_itself(tensor):
        refuse(name, "a map whose elements do not overlap (not an expanded view)", tensor)


def overlaps_itself(tensor: Tensor) -> bool:
    """Whether two indices of ``tensor`` may share memory: with the dimensions ordered by stride,
    each stride must pass the extent of the smaller ones."""
    extent = 0
    for stride, size in sorted((stride, size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1):
        if stride <= extent:
            return True
        extent += stride * (size - 1)
    return False


def check_tiles(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    check_storage(name, tensor)
    if tuple(tensor.shape) != shape or not tensor.is_contiguous():
        refuse(name, f"a contiguous tensor of shape {shape}", tensor)


def check_strip(first_row: int, rows: int, tiles_w: int) -> None:
    """Tile indices: a strip of ``rows`` tile rows from ``first_row``, ``tiles_w`` tiles per row."""
    if not (0 <= first_row and 0 <= rows and first_row + rows <= INT_LIMIT and 1 <= tiles_w <= INT_LIMIT):
        raise ValueError(f"Winograd C transforms: the strip must have first_row >= 0, rows >= 0 and tiles_w >= 1 "
                         f"(tile indices below {INT_LIMIT}); got first_row={first_row}, rows={rows}, "
                         f"tiles_w={tiles_w}")


def elements_to_end(tensor: Tensor) -> int:
    """Elements of ``tensor``'s dtype from its first element to the end of its storage."""
    return tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()


def check_status(status: int, kernel: str) -> None:
    if status != 0:
        raise ValueError(f"Winograd C transforms: {kernel} refused its arguments: "
                         f"{STATUSES.get(status, f'status {status}')}")


def library_or_fail() -> ctypes.CDLL:
    library = c_library()
    if library is None:
        raise RuntimeError("Winograd C transforms: not built here (see the warning that said why); "
                           "winograd_conv3x3 runs its PyTorch version instead")
    return library


def check_input_tiles(image: Tensor, first_row: int, rows: int, tiles_w: int, out: Tensor) -> None:
    check_map("image", image)
    check_strip(first_row, rows, tiles_w)
    check_tiles("transformed tiles", out, (POSITIONS, rows * tiles_w, image.shape[2]))


def winograd_input_tiles(image: Tensor, first_row: int, rows: int, tiles_w: int, out: Tensor) -> None:
    """``V = Bt d B`` of the tiles of tile rows [first_row, first_row + rows) of an (H, W, C) image
    with unit channel stride, into ``out``: (36, rows * tiles_w, C), contiguous, row-major tiles.
    Tile (t, s) reads pixels (4t - 1 .. 4t + 4, 4s - 1 .. 4s + 4); those outside the image read as
    zero. float32 or bfloat16 storage for each of the two, float32 arithmetic."""
    torch.ops.resnet_ops.winograd_input_tiles(image, first_row, rows, tiles_w, out)


def input_tiles_kernel(image: Tensor, first_row: int, rows: int, tiles_w: int, out: Tensor) -> None:
    check_input_tiles(image, first_row, rows, tiles_w, out)
    if out.numel() == 0:
        return
    height, width, channels = image.shape
    status = library_or_fail().winograd_input_transform(
        image.data_ptr(), elements_to_end(image), STORAGE[image.dtype], image.stride(0), image.stride(1), height,
        width, channels, first_row, rows, tiles_w, out.data_ptr(), elements_to_end(out), STORAGE[out.dtype],
        torch.get_num_threads())
    check_status(status, "the input transform")


register("winograd_input_tiles(Tensor image, SymInt first_row, SymInt rows, SymInt tiles_w, Tensor(a!) out) -> ()",
         input_tiles_kernel, check_input_tiles)


def check_output_tiles(products: Tensor, bias: Tensor | None, first_row: int, rows: int, tiles_w: int,
                       relu: bool, out: Tensor) -> None:
    check_map("output", out, written=True)
    check_strip(first_row, rows, tiles_w)
    check_tiles("products", products, (POSITIONS, rows * tiles_w, out.shape[2]))
    if bias is not None:
        check_storage("bias", bias, (torch.float32,))
        if tuple(bias.shape) != (out.shape[2],) or not bias.is_contiguous():
            refuse("bias", f"a contiguous tensor of shape ({out.shape[2]},)", bias)


def winograd_output_tiles(products: Tensor, bias: Tensor | None, first_row: int, rows: int, tiles_w: int,
                          relu: bool, out: Tensor) -> None:
    """``Y = At M A`` (+ bias, then max(Y, 0) if ``relu``) of (36, rows * tiles_w, O) products,
    written into the pixels of tile rows [first_row, first_row + rows) of an (H, W, O) output with
    unit channel stride; pixels past the output's edge are not written. The bias is float32."""
    torch.ops.resnet_ops.winograd_output_tiles(products, bias, first_row, rows, tiles_w, relu, out)


def output_tiles_kernel(products: Tensor, bias: Tensor | None, first_row: int, rows: int, tiles_w: int,
                        relu: bool, out: Tensor) -> None:
    check_output_tiles(products, bias, first_row, rows, tiles_w, relu, out)
    if products.numel() == 0:
        return
    height, width, channels = out.shape
    status = library_or_fail().winograd_output_transform(
        products.data_ptr(), elements_to_end(products), STORAGE[products.dtype],
        None if bias is None else bias.data_ptr(), 0 if bias is None else elements_to_end(bias), int(relu),
        channels, first_row, rows, tiles_w, out.data_ptr(), elements_to_end(out), STORAGE[out.dtype],
        out.stride(0), out.stride(1), height, width, torch.get_num_threads())
    check_status(status, "the output transform")


register("winograd_output_tiles(Tensor products, Tensor? bias, SymInt first_row, SymInt rows, SymInt tiles_w, "
         "bool relu, Tensor(a!) out) -> ()", output_tiles_kernel, check_output_tiles)
