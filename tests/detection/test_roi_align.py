"""The gather RoIAlign against torchvision's op: forward, backward, pyramids, bf16."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from detection.modeling.roi_align import multiscale_roi_align, roi_align


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
