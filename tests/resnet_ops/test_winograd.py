"""Winograd F(4x4, 3x3) convolutions against the 1-D definition and against F.conv2d."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from backbones import build_resnet
from resnet_ops import native
from resnet_ops import winograd as wg
from resnet_ops import winograd_transforms as c_transforms
from resnet_ops.winograd import WinogradConv2d, transform_filters, use_winograd, winograd_conv3x3
from tests.helpers import randomize_bn_statistics


@pytest.fixture(params=["native", "pytorch"])
def transforms(request, monkeypatch):
    """Each test runs with the C tile transforms (resnet_ops/csrc/) and with their PyTorch version."""
    if request.param == "native":
        if shutil.which(native.c_compiler()[0]) is None:
            pytest.skip("no C compiler")
        assert c_transforms.available(), "the C transforms failed to build: see the warning"
    else:
        monkeypatch.setitem(c_transforms.LOADED, "transforms", None)
    return request.param


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_one_dimensional_transforms_give_the_correlation():
    """F(4, 3) by hand: y = At [(G g) * (Bt d)] is y_i = sum_k d_(i+k) g_k for 6 inputs and 3 taps."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        d = torch.randn(6, dtype=torch.float64, generator=generator)
        g = torch.randn(3, dtype=torch.float64, generator=generator)
        y = wg.OUTPUT_TRANSFORM @ ((wg.FILTER_TRANSFORM @ g) * (wg.INPUT_TRANSFORM @ d))
        expected = torch.stack([d[i:i + 3] @ g for i in range(4)])
        assert torch.allclose(y, expected, atol=1e-12)


SHAPES = [(2, 8, 5, 21, 23), (1, 16, 32, 4, 4), (1, 8, 8, 3, 2), (3, 128, 64, 17, 40)]  # N, in, out, H, W


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_matches_conv2d(shape, channels_last, transforms, monkeypatch):
    monkeypatch.setattr(wg, "STRIP_TILES", 24)  # several strips per image, the last one shorter
    n, cin, cout, height, width = shape
    generator = torch.Generator().manual_seed(height * width)
    x = torch.randn(n, cin, height, width, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, generator=generator)
    bias = torch.randn(cout, generator=generator)
    reference = F.conv2d(x, weight, bias, padding=1)
    for b in (bias, None):
        out = winograd_conv3x3(x, transform_filters(weight), b)
        expected = reference if b is not None else reference - bias.view(1, -1, 1, 1)
        assert out.shape == expected.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert relative_error(out, expected) < 3e-5  # F(4x4, 3x3) rounds to about 1e-5


def test_reused_buffers_hold_nothing_of_the_previous_call(transforms):
    """The work buffers are kept between calls: a narrower or shorter map after a larger one must
    still see zero padding around it."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 16, 3, 3, generator=generator)
    filters = transform_filters(weight)
    for height, width in [(40, 52), (13, 9), (40, 17), (6, 52), (21, 21)]:
        x = torch.randn(1, 16, height, width, generator=generator) * 100
        assert relative_error(winograd_conv3x3(x, filters), F.conv2d(x, weight, padding=1)) < 3e-5


@pytest.mark.parametrize("shape", [(2, 8, 5, 21, 23), (1, 32, 16, 12, 30)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_conv2d(shape, channels_last, transforms, monkeypatch):
    monkeypatch.setattr(wg, "STRIP_TILES", 24)
    n, cin, cout, height, width = shape
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    winograd = WinogradConv2d(torch.nn.Conv2d(cin, cout, 3, padding=1))
    winograd.load_state_dict(conv.state_dict())
    x = torch.randn(n, cin, height, width)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(n, cout, height, width)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    for module, inp in zip((conv, winograd), inputs):
        module(inp).backward(grad_out)
    assert relative_error(inputs[1].grad, inputs[0].grad) < 3e-5
    assert relative_error(winograd.weight.grad, conv.weight.grad) < 3e-5
    assert relative_error(winograd.bias.grad, conv.bias.grad) < 3e-5


def test_native_and_pytorch_transforms_agree(monkeypatch):
    """The C transforms against the PyTorch ones on a map that is no multiple of the tile size, with
    channels no multiple of the C kernels' block of 16, and an output written through strides."""
    if not c_transforms.available():
        pytest.skip("no C transforms here")
    monkeypatch.setattr(wg, "STRIP_TILES", 40)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 29, 43, generator=generator).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(21, 37, 3, 3, generator=generator), torch.randn(21, generator=generator)
    filters = transform_filters(weight)
    native_out = winograd_conv3x3(x, filters, bias)
    monkeypatch.setitem(c_transforms.LOADED, "transforms", None)
    pytorch_out = winograd_conv3x3(x, filters, bias)
    assert relative_error(native_out, pytorch_out) < 1e-5
    assert relative_error(native_out, F.conv2d(x, weight, bias, padding=1)) < 3e-5


def test_module_keeps_the_state_dict_and_follows_new_weights():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    winograd = WinogradConv2d(conv).eval()
    assert list(winograd.state_dict()) == list(conv.state_dict())
    x = torch.randn(1, 128, 24, 24)
    with torch.no_grad():
        assert relative_error(winograd(x), conv(x)) < 3e-5
        other = torch.nn.Conv2d(128, 128, 3, padding=1)
        winograd.load_state_dict(other.state_dict())  # the kept transformed filters must be dropped
        assert relative_error(winograd(x), other(x)) < 3e-5
        winograd.weight.mul_(2)
        winograd.refresh()
        assert relative_error(winograd(x), F.conv2d(x, winograd.weight, winograd.bias, padding=1)) < 3e-5


def test_module_falls_back_to_the_direct_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    winograd = WinogradConv2d(conv).eval()
    small = torch.randn(1, 128, 8, 8)  # under MIN_PIXELS
    large = torch.randn(1, 128, 24, 24)
    with torch.no_grad():
        assert torch.equal(winograd(small), conv(small))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert winograd(large).dtype == torch.bfloat16
        traced = torch.jit.trace(winograd, large, check_trace=False)
        with wg.direct_convolutions():
            assert torch.equal(winograd(large), conv(large))
        assert not torch.equal(winograd(large), conv(large))  # Winograd again: rounds differently
    assert "conv" in str(traced.graph)  # traced (and exported) graphs keep a convolution
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d(torch.nn.Conv2d(128, 128, 3, stride=2, padding=1))


def test_use_winograd_converts_the_wide_stride_1_convolutions():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(128, 128, 3, padding=1),  # converted
        torch.nn.Conv2d(128, 64, 3, padding=1),  # too narrow
        torch.nn.Conv2d(128, 128, 3, stride=2, padding=1),
        torch.nn.Conv2d(128, 128, 3, padding=2, dilation=2),
        torch.nn.Conv2d(128, 128, 1),
        torch.nn.Conv2d(128, 128, 3, padding=1, groups=2),
    )
    assert use_winograd(model) == 1
    assert [type(m) is WinogradConv2d for m in model] == [True] + [False] * 5


def test_resnet50_with_winograd_convolutions(monkeypatch):
    """Inference and one training step of a ResNet-50, against the same network in float64.

    The gradients are compared by norm: where float32 rounding moves a pre-activation across zero,
    a ReLU passes the gradient in one network and not in the other, and one such flip where the
    gradient is large dominates an elementwise maximum (how often it happens depends on the thread
    count and the BLAS). Measured here: 2.8e-3 with F(4x4, 3x3), 1e-6 to 7e-4 with the direct
    convolutions; a 20% error in the Winograd filter gradients gives 0.2, in the input gradients 2."""
    monkeypatch.setattr(wg, "MIN_PIXELS", 1)  # res5 of a small image too
    torch.manual_seed(0)
    model = build_resnet(50, out_features=["res4", "res5"])
    randomize_bn_statistics(model)
    reference = build_resnet(50, out_features=["res4", "res5"]).double()
    reference.load_state_dict(model.state_dict())
    # res3-res5's stride-1 3x3 convolutions: 3 + 5 + 2 (the first block of a stage has stride 2).
    assert use_winograd(model, max_channels=512) == 10
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    reference.eval(), model.eval()
    with torch.no_grad():
        expected, out = reference(x.double()), model(x)
    for name in expected:
        assert relative_error(out[name].double(), expected[name]) < 1e-4
    reference.train(), model.train()
    reference(x.double())["res5"].square().mean().backward()
    model(x)["res5"].square().mean().backward()
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        assert ((q.grad.double() - p.grad).norm() / p.grad.norm()).item() < 2e-2, name


def test_training_output_can_be_changed_in_place():
    """A ReLU in place after the convolution (as in the RPN head) keeps the gradients right."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    winograd = WinogradConv2d(torch.nn.Conv2d(16, 16, 3, padding=1))
    winograd.load_state_dict(conv.state_dict())
    x = torch.randn(1, 16, 24, 28)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    for module, inp in zip((conv, winograd), inputs):
        F.relu(module(inp), inplace=True).square().sum().backward()
    assert relative_error(inputs[1].grad, inputs[0].grad) < 3e-5
    assert relative_error(winograd.weight.grad, conv.weight.grad) < 3e-5


needs_native = pytest.mark.skipif(shutil.which(native.c_compiler()[0]) is None, reason="no C compiler")


@needs_native
def test_bf16_storage_rounds_as_pytorch_does():
    """The C transforms in bfloat16 compute in float32 and round to nearest even: the same bits as
    the float32 transforms rounded by PyTorch; bfloat16 inputs read exactly; bias, then ReLU."""
    generator = torch.Generator().manual_seed(4)
    image = (torch.randn(13, 18, 24, generator=generator) * 50).bfloat16().float()  # exact in bfloat16
    tiles_w = -(-18 // 4)
    as_float = torch.empty(wg.POSITIONS, 2 * tiles_w, 24)
    as_bf16 = torch.empty(wg.POSITIONS, 2 * tiles_w, 24, dtype=torch.bfloat16)
    from_bf16 = torch.empty_like(as_bf16)
    c_transforms.winograd_input_tiles(image, 1, 2, tiles_w, as_float)
    c_transforms.winograd_input_tiles(image, 1, 2, tiles_w, as_bf16)
    c_transforms.winograd_input_tiles(image.bfloat16(), 1, 2, tiles_w, from_bf16)
    assert torch.equal(as_bf16, as_float.bfloat16()) and torch.equal(from_bf16, as_bf16)

    products = torch.randn(wg.POSITIONS, 2 * tiles_w, 24, generator=generator).bfloat16()
    bias = torch.randn(24, generator=generator)
    out_float, out_bf16 = torch.zeros(13, 18, 24), torch.zeros(13, 18, 24, dtype=torch.bfloat16)
    c_transforms.winograd_output_tiles(products.float(), bias, 1, 2, tiles_w, True, out_float)
    c_transforms.winograd_output_tiles(products, bias, 1, 2, tiles_w, True, out_bf16)
    assert torch.equal(out_bf16, out_float.bfloat16())
    rows = slice(4, 12)  # tile rows 1 and 2; nothing else written
    assert (out_float[rows] >= 0).all() and (out_float[rows] > 0).float().mean() > 0.3
    assert not out_float[:4].any() and not out_float[12:].any()
    without_relu = torch.zeros(13, 18, 24)
    c_transforms.winograd_output_tiles(products.float(), bias, 1, 2, tiles_w, False, without_relu)
    assert torch.equal(out_float[rows], without_relu[rows].clamp(min=0))


def bf16_winograd_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F(4x4, 3x3) with the tiles and filters rounded to bfloat16, the rest in float64 (PyTorch ops)."""
    n, channels, height, width = x.shape
    tiles_h, tiles_w = -(-height // 4), -(-width // 4)
    padded = F.pad(x.double(), (1, 4 * tiles_w + 1 - width, 1, 4 * tiles_h + 1 - height))
    tiles = padded.unfold(2, 6, 4).unfold(3, 6, 4)  # (N, C, th, tw, 6, 6)
    tiles = tiles.permute(4, 5, 0, 2, 3, 1).reshape(36, -1)
    transformed = (wg.INPUT_TRANSFORM_2D.double() @ tiles).view(36, -1, channels)
    filters = transform_filters(weight).bfloat16().double()
    products = torch.bmm(transformed.bfloat16().double(), filters).bfloat16().double()  # bf16 bmm output
    out = (wg.OUTPUT_TRANSFORM_2D.double() @ products.reshape(36, -1)).view(4, 4, n, tiles_h, tiles_w, -1)
    out = out.permute(2, 5, 3, 0, 4, 1).reshape(n, -1, 4 * tiles_h, 4 * tiles_w)[:, :, :height, :width]
    return out + bias.double().view(1, -1, 1, 1)


@needs_native
def test_bf16_winograd_under_autocast_at_inference(monkeypatch):
    monkeypatch.setattr(wg, "STRIP_TILES", 30)
    generator = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(48, 40, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(40, 48, 3, 3, generator=generator) / 15)
    winograd = WinogradConv2d(conv).eval()
    x = torch.randn(2, 48, 30, 27, generator=generator)
    exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)

    def norm_error(out, reference):
        return ((out.double() - reference).norm() / reference.norm()).item()

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = winograd(x)
        direct = conv(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    # Rounded like the PyTorch reference except for the products' own rounding (float32 sums in a
    # different order, bfloat16 result): within a few bfloat16 steps of the output.
    assert norm_error(out, bf16_winograd_reference(x.bfloat16(), conv.weight, conv.bias)) < 6e-3
    # Against the exact convolution: about 10x the error of autocast's direct bf16 convolution.
    assert 0.005 < norm_error(out, exact) < 0.06 and norm_error(direct, exact) < 0.006

    winograd.bf16 = False  # autocast's convolution, as use_winograd(..., bf16=False) builds it
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(winograd(x), direct)
    winograd.bf16 = True
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training: autocast's convolution and its gradients
        trained = winograd.train()(x.requires_grad_())
    assert torch.equal(trained, direct) and trained.requires_grad


class ConvReLU(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv, self.relu = conv, torch.nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv(x))


def test_fused_relu_is_applied_on_every_path(transforms, monkeypatch):
    """fuse_relu: the ReLU leaves the parent and the convolution applies it, whichever way it runs."""
    monkeypatch.setattr(wg, "STRIP_TILES", 20)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 20, 3, padding=1)
    reference = ConvReLU(conv)
    fused = ConvReLU(WinogradConv2d(torch.nn.Conv2d(24, 20, 3, padding=1)))
    fused.conv.load_state_dict(conv.state_dict())
    assert wg.fuse_relu(fused, "conv", "relu") and isinstance(fused.relu, torch.nn.Identity)
    assert not wg.fuse_relu(fused, "conv", "relu")  # nothing left to fuse
    assert not wg.fuse_relu(ConvReLU(torch.nn.Conv2d(24, 20, 3, padding=1)), "conv", "relu")  # not Winograd
    for height, width in [(26, 31), (8, 8)]:  # Winograd, and the direct convolution of small maps
        x = torch.randn(2, 24, height, width)
        with torch.no_grad():
            expected, out = reference(x), fused(x)
        assert (out >= 0).all() and relative_error(out, expected) < 3e-5
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]  # training
        for module, inp in zip((reference, fused), xs):
            module(inp).square().sum().backward()
        assert relative_error(xs[1].grad, xs[0].grad) < 3e-5
    if transforms == "native":
        x = torch.randn(1, 24, 26, 31)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = fused(x)
        assert out.dtype == torch.bfloat16 and (out >= 0).all() and (out > 0).any()
        assert ((out.double() - reference(x).double()).norm() / reference(x).norm()) < 0.06


def degenerate_input(kind, generator):
    """Maps the C transforms once refused or misread: one channel, one pixel, odd sizes, views."""
    if kind == "one_channel":
        return torch.randn(2, 1, 21, 23, generator=generator)
    if kind == "one_pixel":
        return torch.randn(2, 5, 1, 1, generator=generator)
    if kind == "one_row":
        return torch.randn(1, 6, 1, 13, generator=generator)
    if kind == "odd":
        return torch.randn(1, 7, 9, 5, generator=generator)
    if kind == "sliced":  # every other channel and column of a channels_last map
        x = torch.randn(2, 14, 11, 26, generator=generator).contiguous(memory_format=torch.channels_last)
        return x[:, ::2, :, 1::2]
    if kind == "permuted":  # H and W swapped: neither NCHW nor channels_last
        return torch.randn(1, 6, 15, 10, generator=generator).permute(0, 1, 3, 2)
    raise ValueError(kind)


DEGENERATE = ["one_channel", "one_pixel", "one_row", "odd", "sliced", "permuted"]


@pytest.mark.parametrize("kind", DEGENERATE)
@pytest.mark.parametrize("out_channels", [1, 4])
def test_degenerate_inputs_forward(kind, out_channels, transforms):
    generator = torch.Generator().manual_seed(len(kind) + out_channels)
    x = degenerate_input(kind, generator)
    weight = torch.randn(out_channels, x.shape[1], 3, 3, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    out = winograd_conv3x3(x, transform_filters(weight), bias)
    expected = F.conv2d(x, weight, bias, padding=1)
    assert out.shape == expected.shape
    assert relative_error(out, expected) < 3e-5


@pytest.mark.parametrize("kind", DEGENERATE)
@pytest.mark.parametrize("out_channels", [1, 4])
def test_degenerate_inputs_backward(kind, out_channels, transforms):
    """The input's gradient is a Winograd convolution of the output's gradient, which here comes
    as a plain NCHW tensor (with one channel, one PyTorch already counts as channels_last)."""
    generator = torch.Generator().manual_seed(len(kind) * out_channels)
    x = degenerate_input(kind, generator)
    weight = torch.randn(out_channels, x.shape[1], 3, 3, generator=generator)
    grad_out = torch.randn(x.shape[0], out_channels, x.shape[2], x.shape[3], generator=generator)
    ours = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
    wg.winograd_conv2d(ours[0], ours[1], None).backward(grad_out)
    reference = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
    F.conv2d(reference[0], reference[1], padding=1).backward(grad_out)
    assert relative_error(ours[0].grad, reference[0].grad) < 3e-5
    assert relative_error(ours[1].grad, reference[1].grad) < 3e-5


@needs_native
def test_a_convolution_runs_in_no_grad_after_inference_mode_in_the_same_thread():
    """The kept workspaces: one made under torch.inference_mode is an inference tensor, which no_grad
    code may not write; a classifier evaluated in inference mode then used under no_grad failed so."""
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(1, 16, 24, 24, generator=generator)
    weight = torch.randn(16, 16, 3, 3, generator=generator) * 0.1
    filters = transform_filters(weight)
    expected = F.conv2d(x, weight, padding=1)
    with torch.inference_mode():
        in_inference = winograd_conv3x3(x, filters)
    with torch.no_grad():
        in_no_grad = winograd_conv3x3(x, filters)
    torch.testing.assert_close(in_inference, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(in_no_grad, expected, rtol=1e-4, atol=1e-4)
