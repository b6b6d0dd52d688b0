"""The Winograd operators as PyTorch sees them: schemas, fake tensors and autograd (opcheck),
torch.compile and torch.export, the C tile transforms against their definition on awkward maps,
and the argument checks in front of the C code (also under python -O, and in the C code itself).

`make sanitize` runs this file against an AddressSanitizer/UBSan build of the C kernels."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from resnet_ops import native
from resnet_ops import winograd as wg
from resnet_ops import winograd_transforms as c_transforms
from tests.helpers import subprocess_env


@pytest.fixture
def kernels():
    """The C transforms, built here (a test of them must not pass by skipping them unnoticed)."""
    if not c_transforms.available():
        pytest.skip("the C transforms are not built here (no C compiler, or RESNET_DETECTION_NATIVE=0)")


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ---------------------------------------------------------------------------------------------
# The tile transforms against their definition, on odd, tiny and strided maps, in both dtypes.

BT = wg.INPUT_TRANSFORM  # (6, 6) float64
AT = wg.OUTPUT_TRANSFORM  # (4, 6) float64


def image_of(kind: str, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """(H, W, C) maps with unit channel stride, or one channel, that the kernels must read right."""
    if kind == "odd":
        image = torch.randn(9, 7, 5, generator=generator)
    elif kind == "one_pixel":
        image = torch.randn(1, 1, 3, generator=generator)
    elif kind == "one_channel_nchw":  # a 1-channel map seen through NCHW strides (channel stride H*W)
        image = torch.randn(1, 11, 6, generator=generator).permute(1, 2, 0)
    elif kind == "every_other_column":
        image = torch.randn(10, 26, 17, generator=generator)[:, ::2]
    elif kind == "channel_slice":  # unit channel stride, the rows and columns of a wider map
        image = torch.randn(6, 13, 40, generator=generator)[1:, 2:, 3:21]
    elif kind == "transposed":
        image = torch.randn(13, 5, 18, generator=generator).permute(1, 0, 2)
    else:
        raise ValueError(kind)
    return image.to(dtype)


def reference_input_tiles(image: torch.Tensor, first_row: int, rows: int, tiles_w: int) -> torch.Tensor:
    """``Bt d B`` of each 6x6 tile in float64: tile (t, s) reads pixels (4t - 1 + i, 4s - 1 + j), zero outside."""
    height, width, channels = image.shape
    canvas_h, canvas_w = max(height + 2, 4 * (first_row + rows) + 2), max(width + 2, 4 * tiles_w + 2)
    canvas = torch.zeros(channels, canvas_h, canvas_w, dtype=torch.float64)
    canvas[:, 1:height + 1, 1:width + 1] = image.double().permute(2, 0, 1)  # pixel (y, x) at (y + 1, x + 1)
    tiles = canvas.unfold(1, 6, 4).unfold(2, 6, 4)[:, first_row:first_row + rows, :tiles_w]  # (C, t, s, 6, 6)
    transformed = torch.einsum("ai,ctsij,bj->abtsc", BT, tiles, BT)
    return transformed.reshape(36, rows * tiles_w, channels)


KINDS = ["odd", "one_pixel", "one_channel_nchw", "every_other_column", "channel_slice", "transposed"]
STORAGES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
            (torch.bfloat16, torch.float32)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: f"{s[0]}->{s[1]}".replace("torch.", ""))
def test_input_tiles_match_the_definition(kind, storage, kernels):
    image_dtype, tiles_dtype = storage
    generator = torch.Generator().manual_seed(len(kind))
    image = image_of(kind, image_dtype, generator)
    height, width, channels = image.shape
    tiles_h, tiles_w = -(-height // 4), -(-width // 4)
    # The whole map in one strip, a strip starting below the top, and tiles past the map's edge.
    for first_row, rows, columns in [(0, tiles_h, tiles_w), (tiles_h - 1, 1, tiles_w), (0, tiles_h + 1, tiles_w + 2)]:
        out = torch.full((36, rows * columns, channels), float("nan"), dtype=tiles_dtype)
        c_transforms.winograd_input_tiles(image, first_row, rows, columns, out)
        expected = reference_input_tiles(image, first_row, rows, columns)
        # float32 arithmetic; bfloat16 storage of the result adds its rounding (8 bits).
        tolerance = 1e-6 if tiles_dtype == torch.float32 else 8e-3
        assert relative_error(out, expected) < tolerance, (first_row, rows, columns)


def reference_output_tiles(products: torch.Tensor, bias, relu: bool, rows: int, tiles_w: int) -> torch.Tensor:
    """``At M A`` (+ bias, ReLU) of each tile in float64, as a (4 * rows, 4 * tiles_w, O) map."""
    m = products.double().reshape(6, 6, rows, tiles_w, -1)
    y = torch.einsum("ai,ijtsc,bj->tasbc", AT, m, AT).reshape(4 * rows, 4 * tiles_w, -1)
    if bias is not None:
        y = y + bias.double()
    return y.clamp(min=0) if relu else y


@pytest.mark.parametrize("shape", [(9, 7, 5), (1, 1, 3), (1, 13, 1), (6, 21, 17)], ids=str)
@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: f"{s[0]}->{s[1]}".replace("torch.", ""))
@pytest.mark.parametrize("relu", [False, True])
def test_output_tiles_match_the_definition(shape, storage, relu, kernels):
    """Written through the strides of a view inside a larger map: only the strip's pixels change."""
    products_dtype, out_dtype = storage
    height, width, channels = shape
    generator = torch.Generator().manual_seed(height * width + channels)
    tiles_h, tiles_w = -(-height // 4), -(-width // 4)
    first_row, rows = tiles_h // 2, tiles_h - tiles_h // 2
    products = torch.randn(36, rows * tiles_w, channels, generator=generator).to(products_dtype)
    bias = torch.randn(channels, generator=generator) if channels > 1 else None
    sentinel = 7.0
    larger = torch.full((height + 3, width + 5, channels + 4), sentinel, dtype=out_dtype)
    out = larger[1:height + 1, 2:width + 2, 1:channels + 1]  # unit channel stride, not contiguous
    c_transforms.winograd_output_tiles(products, bias, first_row, rows, tiles_w, relu, out)

    top = 4 * first_row
    expected = reference_output_tiles(products, bias, relu, rows, tiles_w)[:height - top, :width]
    tolerance = 1e-6 if out_dtype == torch.float32 else 8e-3
    assert relative_error(out[top:], expected) < tolerance
    untouched = torch.ones_like(larger, dtype=torch.bool)
    untouched[1 + top:height + 1, 2:width + 2, 1:channels + 1] = False
    assert (larger[untouched] == sentinel).all()


# ---------------------------------------------------------------------------------------------
# Registration: what opcheck tests (schema, fake tensors, autograd, AOT tracing with dynamic shapes).

def operator_samples():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 11, 9, generator=generator)
    weight, bias = torch.randn(5, 6, 3, 3, generator=generator), torch.randn(5, generator=generator)
    return {
        "winograd_conv3x3": (x, wg.transform_filters(weight), bias, True),
        "winograd_conv2d": (x.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()),
        "winograd_filter_grad": (x, torch.randn(2, 5, 11, 9, generator=generator)),
        "winograd_input_tiles": (torch.randn(11, 9, 6, generator=generator), 1, 2, 3, torch.empty(36, 6, 6)),
        "winograd_output_tiles": (torch.randn(36, 6, 5, generator=generator), bias, 1, 2, 3, False,
                                  torch.zeros(11, 9, 5)),
    }


@pytest.mark.parametrize("name", ["winograd_conv3x3", "winograd_conv2d", "winograd_filter_grad",
                                  "winograd_input_tiles", "winograd_output_tiles"])
def test_registered_operators_pass_opcheck(name, kernels):
    operator = getattr(torch.ops.resnet_ops, name).default
    results = torch.library.opcheck(operator, operator_samples()[name])
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.skipif(TorchVersion(torch.__version__) < (2, 5), reason="PyTorch 2.4's torch.compile breaks the graph "
                    "where a training WinogradConv2d refreshes its transformed filters (fullgraph=True fails); "
                    "one graph from 2.5")
def test_torch_compile_gives_the_eager_numbers(kernels):
    """Inference and a training step of a compiled module with Winograd convolutions: one graph
    with the operators in it (not a fallback to the direct convolutions), the eager results."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    assert wg.use_winograd(model, min_channels=8, min_pixels=1) == 2
    first, second = model[0], model[2]
    x = torch.randn(2, 8, 23, 19)
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module.forward

    with torch.no_grad():
        eager = model(x)
        direct = F.conv2d(F.conv2d(x, first.weight, first.bias, padding=1).relu(), second.weight, second.bias, padding=1)
        assert 0 < relative_error(eager, direct) < 3e-5  # Winograd's rounding, not the direct convolution's
        assert torch.equal(torch.compile(model, backend="aot_eager", fullgraph=True)(x), eager)
        torch.compile(model, backend=recording_backend, fullgraph=True)(x)
    assert graphs[0].count("resnet_ops.winograd_conv3x3") == 2 and "conv2d(" not in graphs[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the bfloat16 Winograd convolutions
        eager_bf16 = model(x)
        assert eager_bf16.dtype == torch.bfloat16
        assert torch.equal(torch.compile(model, backend="aot_eager", fullgraph=True)(x), eager_bf16)

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    gradients = []
    for run, inp in zip((model, compiled), inputs):
        model.zero_grad()
        run(inp).square().sum().backward()
        gradients.append([inp.grad] + [p.grad.clone() for p in model.parameters()])
    for eager_grad, compiled_grad in zip(*gradients):
        assert relative_error(compiled_grad, eager_grad) < 1e-6


def test_torch_export_records_the_operator(kernels):
    """torch.export keeps the operator as one node (with its numbers); WinogradConv2d itself exports
    as the convolution it replaces, which every runtime knows."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1)

    class WinogradOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv  # registered, so that the export lifts its parameters as inputs

        def forward(self, x):
            return wg.winograd_conv2d(x, self.conv.weight, self.conv.bias)

    x = torch.randn(1, 8, 12, 10)
    program = torch.export.export(WinogradOnly(), (x,))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets == ["resnet_ops.winograd_conv2d.default"]
    with torch.no_grad():
        assert relative_error(program.module()(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < 3e-5
        module_program = torch.export.export(wg.WinogradConv2d(conv, min_pixels=1).eval(), (x,))
    targets = [str(node.target) for node in module_program.graph.nodes if node.op == "call_function"]
    if hasattr(torch.compiler, "is_exporting"):
        assert targets == ["aten.conv2d.default"]
    else:  # before PyTorch 2.6 the module cannot tell an export from eager code: the graph keeps the operator
        assert targets[-1] == "resnet_ops.winograd_conv3x3.default" and "aten.conv2d.default" not in targets


# ---------------------------------------------------------------------------------------------
# Argument checks: real exceptions that name the operand, before any C code runs.

def bad_calls():
    """(what is wrong, the call, the words the error must contain)."""
    image, good_tiles = torch.randn(8, 8, 16), torch.empty(36, 4, 16)
    products, out = torch.randn(36, 4, 16), torch.empty(8, 8, 16)
    x, filters = torch.randn(1, 16, 8, 8), wg.transform_filters(torch.randn(4, 16, 3, 3))
    inputs, outputs = c_transforms.winograd_input_tiles, c_transforms.winograd_output_tiles
    return [
        ("channels not innermost", lambda: inputs(image.permute(2, 1, 0).contiguous().permute(2, 1, 0), 0, 2, 2,
                                                  good_tiles), "the image must be an (H, W, C) map"),
        ("float64 image", lambda: inputs(image.double(), 0, 2, 2, good_tiles), "the image must be of"),
        ("2-D image", lambda: inputs(image[0], 0, 2, 2, good_tiles), "the image must be an (H, W, C) map"),
        ("empty image", lambda: inputs(image[:0], 0, 2, 2, good_tiles), "the image must be a map of 1 to"),
        ("tiles of the wrong size", lambda: inputs(image, 0, 2, 2, torch.empty(36, 3, 16)), "the transformed tiles"),
        ("strided tiles", lambda: inputs(image, 0, 2, 2, torch.empty(36, 4, 32)[..., ::2]), "the transformed tiles"),
        ("float64 tiles", lambda: inputs(image, 0, 2, 2, good_tiles.double()), "the transformed tiles"),
        ("negative first row", lambda: inputs(image, -1, 2, 2, good_tiles), "first_row >= 0"),
        ("no tile column", lambda: inputs(image, 0, 2, 0, torch.empty(36, 0, 16)), "tiles_w >= 1"),
        ("tile rows past a C int", lambda: inputs(image, 2**30, 1, 4, good_tiles), "tile indices below"),
        ("output of other width", lambda: outputs(products, None, 0, 2, 2, False, torch.empty(8, 8, 17)),
         "the products must be a contiguous tensor of shape (36, 4, 17)"),
        ("expanded output", lambda: outputs(products, None, 0, 2, 2, False, torch.empty(1, 8, 16).expand(8, 8, 16)),
         "the output must be a map whose elements do not overlap"),
        ("float64 bias", lambda: outputs(products, torch.zeros(16, dtype=torch.float64), 0, 2, 2, False, out),
         "the bias must be of torch.float32"),
        ("short bias", lambda: outputs(products, torch.zeros(15), 0, 2, 2, False, out), "the bias must be a contiguous"),
        ("meta output", lambda: outputs(products, None, 0, 2, 2, False, out.to("meta")), "the output must be a CPU tensor"),
        ("filters of other channels", lambda: wg.winograd_conv3x3(x[:, :8], filters), "filters must be (36, C, O)"),
        ("bias of other channels", lambda: wg.winograd_conv3x3(x, filters, torch.zeros(5)), "bias must have shape (4,)"),
        ("float64 x with float32 filters", lambda: wg.winograd_conv3x3(x.double(), filters), "one floating dtype"),
        ("3-D x", lambda: wg.winograd_conv3x3(x[0], filters), "x must be an (N, C, H, W) map"),
        ("5x5 weights", lambda: wg.winograd_conv2d(x, torch.randn(4, 16, 5, 5)), "weight must be (O, C, 3, 3)"),
        ("gradient of other size", lambda: wg.winograd_filter_grad(x, torch.randn(1, 4, 8, 7)), "must share N, H and W"),
    ]


def test_bad_operands_are_refused_by_name(kernels):
    for what, call, words in bad_calls():
        with pytest.raises(ValueError) as caught:
            call()
        assert words in str(caught.value), (what, str(caught.value))


def test_transformed_filters_refuse_gradients():
    """winograd_conv3x3 has no gradients (it takes transformed filters): backward says so instead of
    leaving them out; winograd_conv2d, which takes the weights, has them."""
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    out = wg.winograd_conv3x3(x, wg.transform_filters(weight))
    with pytest.raises(RuntimeError, match="use winograd_conv2d"):
        out.sum().backward()
    wg.winograd_conv2d(x, weight).sum().backward()
    reference = [x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()]
    F.conv2d(*reference, padding=1).sum().backward()
    assert relative_error(x.grad, reference[0].grad) < 3e-5
    assert relative_error(weight.grad, reference[1].grad) < 3e-5


CHECKS_UNDER_O = """
import torch
from tests.resnet_ops.test_winograd_ops import bad_calls
assert False, "asserts run"  # python -O removes this line: the checks below must not depend on asserts
"""


def test_checks_hold_under_python_O(kernels, repo_root):
    """python -O removes asserts: the checks are plain exceptions, so every bad call still fails."""
    script = CHECKS_UNDER_O + """
refused = 0
for what, call, words in bad_calls():
    try:
        call()
    except ValueError as error:
        refused += words in str(error)
print("refused", refused, "of", len(bad_calls()))
"""
    result = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, cwd=repo_root,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count = len(bad_calls())
    assert result.stdout.strip().splitlines()[-1] == f"refused {count} of {count}"


def test_c_functions_refuse_buffers_too_short(kernels):
    """The C code checks its sizes against the buffer lengths it is given and writes nothing otherwise."""
    library = c_transforms.c_library()
    image = torch.randn(8, 8, 16)
    tiles = torch.full((36, 4, 16), 3.0)
    h, w, c = image.shape

    def input_status(image_length, tiles_length, first_row=0, rows=2):
        return library.winograd_input_transform(image.data_ptr(), image_length, 0, image.stride(0), image.stride(1),
                                                h, w, c, first_row, rows, 2, tiles.data_ptr(), tiles_length, 0, 1)

    assert input_status(image.numel() - 1, tiles.numel()) == 2
    assert input_status(image.numel(), tiles.numel() - 1) == 3
    assert input_status(image.numel(), tiles.numel(), first_row=-1) == 1
    assert (tiles == 3.0).all()  # nothing written by the refused calls
    assert input_status(image.numel(), tiles.numel()) == 0 and not (tiles == 3.0).all()

    out, bias = torch.full((8, 8, 16), 3.0), torch.zeros(16)

    def output_status(tiles_length, out_length, bias_length):
        return library.winograd_output_transform(tiles.data_ptr(), tiles_length, 0, bias.data_ptr(), bias_length, 0,
                                                 c, 0, 2, 2, out.data_ptr(), out_length, 0, out.stride(0),
                                                 out.stride(1), h, w, 1)

    assert output_status(tiles.numel() - 1, out.numel(), 16) == 2
    assert output_status(tiles.numel(), out.numel() - 1, 16) == 3
    assert output_status(tiles.numel(), out.numel(), 15) == 4
    assert (out == 3.0).all()
    assert output_status(tiles.numel(), out.numel(), 16) == 0 and not (out == 3.0).all()


def test_checked_build_gives_the_same_numbers(kernels, monkeypatch, tmp_path):
    """The C code compiles with -D_FORTIFY_SOURCE=2 -O2 and every warning an error, and that build
    computes what the release build does."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 20, 13, 11, generator=generator)
    weight, bias = torch.randn(12, 20, 3, 3, generator=generator), torch.randn(12, generator=generator)
    filters = wg.transform_filters(weight)
    release = wg.winograd_conv3x3(x, filters, bias, True)
    assert relative_error(release, F.conv2d(x, weight, bias, padding=1).relu()) < 3e-5
    monkeypatch.setenv(native.BUILD_VARIABLE, "checked")
    monkeypatch.setenv("RESNET_DETECTION_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "LOADED", {})
    monkeypatch.setattr(c_transforms, "LOADED", {})
    checked = wg.winograd_conv3x3(x, filters, bias, True)
    assert [path.name.split("-")[1] for path in (tmp_path / "kernels").iterdir()] == ["checked"]
    assert relative_error(checked, release) < 1e-6


def test_unknown_build_is_refused(monkeypatch):
    monkeypatch.setenv(native.BUILD_VARIABLE, "fast")
    with pytest.raises(native.BuildError, match="RESNET_DETECTION_NATIVE_BUILD='fast' is not a build") as caught:
        native.build_flags()
    assert caught.value.user_error  # one line on the command line, no traceback


def test_sanitize_build_needs_the_asan_runtime_first(monkeypatch, tmp_path):
    """Loading an ASan-built library into a process without the runtime ends the process: refused
    before, with the way to run it."""
    monkeypatch.setenv(native.BUILD_VARIABLE, "sanitize")
    monkeypatch.setenv("RESNET_DETECTION_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "LOADED", {})
    monkeypatch.setattr(native, "asan_runtime_loaded", lambda: False)
    with pytest.raises(native.BuildError, match="run `make sanitize`"):
        native.load_library("winograd_transforms")
    assert not (tmp_path / "kernels").exists() or not list((tmp_path / "kernels").iterdir())
