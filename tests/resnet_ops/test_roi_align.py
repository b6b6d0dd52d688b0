"""The gather RoIAlign against torchvision's op: forward, backward, pyramids, bf16."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from resnet_ops.roi_align import fpn_levels, multiscale_roi_align, roi_align


def random_boxes(generator, count, height, width, stride):
    """Boxes in image pixels, many crossing the borders, some tiny and some empty."""
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * stride * 1.2 - 8 * stride
    wh = torch.rand(count, 2, generator=generator) ** 2 * torch.tensor([width, height]) * stride * 0.8
    wh[: count // 10] = 0.3  # tiny
    wh[count // 10: count // 8] = 0.0  # empty
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_torchvision_forward_and_backward(aligned, sampling_ratio, channels_last):
    generator = torch.Generator().manual_seed(sampling_ratio + 3 * aligned)
    features = torch.randn(2, 16, 13, 19, generator=generator)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    boxes = [random_boxes(generator, 60, 13, 19, 8), random_boxes(generator, 45, 13, 19, 8)]
    grad = torch.randn(105, 16, 5, 5, generator=generator)

    ours_in = features.clone().requires_grad_()
    ours = roi_align(ours_in, boxes, 5, 1 / 8, sampling_ratio, aligned, impl="gather")
    ours.backward(grad)
    ref_in = features.clone().requires_grad_()
    ref = tv_roi_align(ref_in, boxes, 5, 1 / 8, sampling_ratio, aligned)
    ref.backward(grad)

    assert ref.abs().max() > 0.5  # the boxes do sample the map
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=0, atol=1e-5)


def test_empty_and_boxless_images():
    features = torch.randn(2, 4, 8, 8)
    boxes = [torch.zeros(0, 4), torch.tensor([[3.0, 3.0, 3.0, 9.0]])]  # no RoIs; a zero-width RoI
    for ratio in (0, 2):
        ours = roi_align(features, boxes, 3, 0.5, ratio, True, impl="gather")
        torch.testing.assert_close(ours, tv_roi_align(features, boxes, 3, 0.5, ratio, True), rtol=0, atol=1e-6)
    assert roi_align(features, [torch.zeros(0, 4)] * 2, 3, 0.5, 2, True, impl="gather").shape == (0, 4, 3, 3)


def test_bf16_is_close_to_fp32_reference():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 32, 20, 24, generator=generator).bfloat16()
    boxes = [random_boxes(generator, 50, 20, 24, 4)]
    ours = roi_align(features, boxes, 7, 0.25, 2, False, impl="gather")
    assert ours.dtype == torch.bfloat16
    ref = tv_roi_align(features.float(), boxes, 7, 0.25, 2, False)
    torch.testing.assert_close(ours.float(), ref, rtol=2e-2, atol=2e-2)


def test_pyramid_matches_torchvision_multiscale_roi_align():
    generator = torch.Generator().manual_seed(1)
    strides = [4, 8, 16, 32]
    image_sizes = [(256, 320), (224, 320)]
    features = {f"p{i + 2}": torch.randn(2, 8, 256 // s, 320 // s, generator=generator) for i, s in enumerate(strides)}
    boxes = [random_boxes(generator, 80, 64, 80, 4) for _ in image_sizes]
    boxes[0][:5] = torch.tensor([0.0, 0.0, 300.0, 250.0])  # large boxes land on the coarsest level
    reference = MultiScaleRoIAlign(list(features), 7, 2)(features, boxes, image_sizes)
    for impl in ("gather", "torchvision"):
        ours = multiscale_roi_align(list(features.values()), boxes, strides, 7, 2, impl=impl)
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_pyramid_in_one_call_equals_a_call_per_level(channels_last):
    """The one-table pyramid gather (every fixed sampling ratio) against roi_align on each RoI's level:
    the same values bit for bit, the gradients to float rounding (the scatter-adds sum in another
    order); RoIs of no level (empty, inverted, NaN) give zeros."""
    generator = torch.Generator().manual_seed(5)
    strides = [4, 8, 16, 32]
    maps = [torch.randn(2, 6, 448 // s, 576 // s, generator=generator) for s in strides]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    boxes = [random_boxes(generator, 70, 112, 144, 4) for _ in range(2)]
    boxes[0][:4] = torch.tensor([0.0, 0.0, 570.0, 440.0])  # the coarsest level
    boxes[1][:3] = torch.tensor([[5.0, 5.0, 1.0, 9.0], [float("nan"), 1.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    levels = fpn_levels(rois[:, 1:], strides)
    assert set(levels.tolist()) == {-1, 0, 1, 2, 3}
    grad = torch.randn(len(rois), 6, 7, 7, generator=generator)

    ours_in = [m.clone().requires_grad_() for m in maps]
    ours = multiscale_roi_align(ours_in, boxes, strides, 7, 2, impl="gather")
    ours.backward(grad)
    ref_in = [m.clone().requires_grad_() for m in maps]
    ref = torch.zeros(len(rois), 6, 7, 7)
    for level, stride in enumerate(strides):
        index = torch.nonzero(levels == level).squeeze(1)
        ref[index] = roi_align(ref_in[level], rois[index], 7, 1 / stride, 2, aligned=False, impl="gather")
    ref.backward(grad)

    assert torch.equal(ours, ref) and ours[levels < 0].abs().sum() == 0
    for got, want in zip(ours_in, ref_in):
        assert want.grad.abs().sum() > 0
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=1e-6)


def test_pyramid_in_one_call_with_no_rois():
    maps = [torch.randn(2, 4, 64 // s, 64 // s, requires_grad=True) for s in (4, 8, 16, 32)]
    out = multiscale_roi_align(maps, [torch.zeros(0, 4)] * 2, [4, 8, 16, 32], 7, 2, impl="gather")
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert all(m.grad is not None and m.grad.abs().sum() == 0 for m in maps)


def test_pyramid_gather_forces_no_device_to_host_sync():
    """No aten::nonzero or item in the one-table call (each is a sync on a GPU), unlike a call per level."""
    maps = [torch.randn(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 12.0], [3.0, 4.0, 60.0, 50.0], [1.0, 1.0, 30.0, 20.0]])]
    with torch.profiler.profile() as profile:
        multiscale_roi_align(maps, boxes, [4, 8, 16, 32], 7, 2, impl="gather")
    names = {event.name for event in profile.events()}
    assert "aten::embedding_bag" in names
    assert not names & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"}


def test_hand_computed_values_on_a_linear_ramp():
    """On the map v(y, x) = 5y + x bilinear sampling is exact, so each bin is v at its sample mean.
    Box (1, 1, 3, 3), 4x4 bins of 0.5 pixel with one sample each (adaptive ratio): pixel-aligned
    samples at 0.75 + 0.5 i, legacy ones at 1.25 + 0.5 i."""
    ramp = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    box = [torch.tensor([[1.0, 1.0, 3.0, 3.0]])]
    centres = torch.arange(4) * 0.5
    for aligned, start in ((True, 0.75), (False, 1.25)):
        expected = 5 * (start + centres)[:, None] + (start + centres)[None, :]
        out = roi_align(ramp, box, 4, 1.0, 0, aligned, impl="gather")
        torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-6)
    # [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], ...]: the upsampled 2x2 centre of the map
    assert roi_align(ramp, box, 4, 1.0, 0, True, impl="gather")[0, 0, 0].tolist() == [4.5, 5.0, 5.5, 6.0]


def grid_sample_roi_align(features, box, output_size, samples):
    """Aligned RoIAlign of one box inside the map as bilinear resampling of the box at
    ``output_size * samples`` points per side (grid_sample, pixel centres), averaged per bin."""
    height, width = features.shape[-2:]
    x1, y1, x2, y2 = box.tolist()
    # affine_grid's [-1, 1] spans the box; grid_sample's [-1, 1] spans the map's pixel edges.
    theta = torch.tensor([[[(x2 - x1) / width, 0.0, (x1 + x2) / width - 1.0],
                           [0.0, (y2 - y1) / height, (y1 + y2) / height - 1.0]]], dtype=features.dtype)
    side = output_size * samples
    grid = F.affine_grid(theta, [1, features.shape[1], side, side], align_corners=False)
    resampled = F.grid_sample(features, grid, mode="bilinear", align_corners=False)
    return F.avg_pool2d(resampled, samples)


@pytest.mark.parametrize("box", [(10.0, 12.0, 20.0, 21.0), (3.3, 4.1, 25.7, 9.9), (8.0, 8.0, 9.0, 9.5)])
def test_equals_grid_sample_inside_the_map(box):
    generator = torch.Generator().manual_seed(7)
    features = torch.rand(1, 3, 30, 30, generator=generator, dtype=torch.float64) * 100
    box = torch.tensor([box], dtype=torch.float64)
    ours = roi_align(features, [box], 5, 1.0, 2, True, impl="gather")
    torch.testing.assert_close(ours, grid_sample_roi_align(features, box[0], 5, 2), rtol=0, atol=1e-10)


def test_float64_positions_are_computed_in_float64():
    """Samples that land exactly on the border of the map in float64 fall outside it when the
    positions are computed in float32 (an error of 2.3 here before); torchvision's float64 op is exact."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 2, 6, 7, dtype=torch.float64, generator=generator)
    box = [torch.tensor([[-17.0, 3.0, -11.0, 25.0]], dtype=torch.float64) / 7]
    for ratio in (0, 1, 3):
        ours = roi_align(features, box, 3, 0.25, ratio, True, impl="gather")
        torch.testing.assert_close(ours, tv_roi_align(features, box, 3, 0.25, ratio, True), rtol=0, atol=1e-12)
    boxes = [random_boxes(generator, 200, 6, 7, 4).double()]
    for aligned in (True, False):
        ours = roi_align(features, boxes, 3, 0.25, 0, aligned, impl="gather")
        torch.testing.assert_close(ours, tv_roi_align(features, boxes, 3, 0.25, 0, aligned), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_gradcheck_in_float64(sampling_ratio, aligned):
    features = torch.rand(2, 2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rois = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9], [1, -2, 3.5, 11, 7.25]],
                        dtype=torch.float64)

    def pooled(x):
        return roi_align(x, rois, 5, 0.5, sampling_ratio, aligned, impl="gather")

    assert torch.autograd.gradcheck(pooled, (features.requires_grad_(),))


def test_sample_less_rois_still_have_a_gradient_function():
    """An adaptive ratio where no RoI gets a sample (empty boxes): zeros, and a loss built on them
    back-propagates zeros into the map, as with torchvision's op."""
    features = torch.randn(1, 3, 8, 8, requires_grad=True)
    empty = [torch.tensor([[3.0, 3.0, 3.0, 6.0], [2.0, 5.0, 7.0, 5.0]])]
    for ratio in (0, -1):
        out = roi_align(features, empty, 2, 1.0, ratio, True, impl="gather")
        reference = tv_roi_align(features, empty, 2, 1.0, ratio, True)
        assert out.requires_grad and torch.equal(out, reference) and not out.any()
        (grad,) = torch.autograd.grad(out.sum(), features)
        assert torch.equal(grad, torch.zeros_like(features))


def test_boxes_get_no_gradient():
    """torchvision's op treats the boxes as constants; so does the gather (the map's gradient is
    unchanged and the boxes' stays None)."""
    features = torch.randn(2, 3, 9, 9)
    rois = torch.tensor([[0, 1.0, 1.0, 6.3, 7.0], [1, 0.5, 2.0, 8.0, 4.0]])
    grads = []
    for impl in ("gather", "torchvision"):
        x, r = features.clone().requires_grad_(), rois.clone().requires_grad_()
        roi_align(x, r, 3, 1.0, 2, True, impl=impl).square().sum().backward()
        assert r.grad is None
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_rois_of_another_dtype_and_a_transposed_map(dtype):
    """The map's dtype decides (float16 rois on a float32 map, ...), and a non-contiguous map
    (transposed) reads the same as its contiguous copy."""
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 4, 12, 11, generator=generator).transpose(2, 3)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0]]), random_boxes(generator, 3, 11, 12, 1).abs()], 1)
    ours = roi_align(features, rois.to(dtype), 4, 1.0, 0, True, impl="gather")
    reference = tv_roi_align(features.contiguous(), rois.to(dtype).float(), 4, 1.0, 0, True)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-6)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_inverted_boxes_and_rois_given_as_one_tensor(aligned, sampling_ratio):
    """Boxes with x2 < x1 or y2 < y1 (no samples when aligned; one pixel in the legacy op), as a
    per-image list and as the same (K, 5) rois: both equal torchvision's op."""
    generator = torch.Generator().manual_seed(8)
    features = torch.randn(2, 3, 12, 14, generator=generator)
    boxes = [random_boxes(generator, 6, 12, 14, 1), random_boxes(generator, 5, 12, 14, 1)]
    for image_boxes in boxes:
        image_boxes[::2] = image_boxes[::2, [2, 3, 0, 1]]  # every other box inverted
    rois = torch.cat([torch.tensor([[0.0]] * 6 + [[1.0]] * 5), torch.cat(boxes)], 1)
    reference = tv_roi_align(features, rois, 3, 1.0, sampling_ratio, aligned)
    for given in (boxes, rois):
        ours = roi_align(features, given, 3, 1.0, sampling_ratio, aligned, impl="gather")
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-6)


def test_wrong_box_shapes_are_refused_with_the_expected_shape():
    features = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"must be \(K, 5\) rows .* got shape \[3, 4\]; give per-image"):
        roi_align(features, torch.zeros(3, 4), 2, 1.0)
    with pytest.raises(ValueError, match=r"boxes of image 1 must be \(K, 4\) .* got shape \[2, 5\]"):
        roi_align(features, [torch.zeros(1, 4), torch.zeros(2, 5)], 2, 1.0)
    assert roi_align(features, [], 2, 1.0).shape == (0, 2, 2, 2)  # no images, no RoIs


class RoIAlignModule(torch.nn.Module):
    def forward(self, features: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return roi_align(features, boxes, 3, 0.5, 2, True)


def test_torch_fx_records_one_call():
    traced = torch.fx.symbolic_trace(RoIAlignModule())
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert calls == [roi_align]
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 10, 12, generator=generator)
    for count in (1, 7):  # the box count is data, not part of the graph
        boxes = [random_boxes(generator, count, 10, 12, 2), random_boxes(generator, 2, 10, 12, 2)]
        torch.testing.assert_close(traced(features, boxes), tv_roi_align(features, boxes, 3, 0.5, 2, True),
                                   rtol=0, atol=2e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_scripted_with_a_list_of_boxes_and_with_rois():
    scripted = torch.jit.script(RoIAlignModule())
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 4, 10, 12, generator=generator)
    boxes = [random_boxes(generator, 5, 10, 12, 2), random_boxes(generator, 3, 10, 12, 2)]
    expected = tv_roi_align(features, boxes, 3, 0.5, 2, True)
    torch.testing.assert_close(scripted(features, boxes), expected, rtol=0, atol=0)
    rois = torch.cat([torch.tensor([[0.0]] * 5 + [[1.0]] * 3), torch.cat(boxes)], 1)
    torch.testing.assert_close(scripted(features, rois), expected, rtol=0, atol=0)
    with pytest.raises(Exception, match=r"must be \(K, 5\)"):
        scripted(features, torch.zeros(2, 4))
