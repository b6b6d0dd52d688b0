"""The poolers and the pyramid's level rule: torchvision's roi_align, roi_pool and MultiScaleRoIAlign
as the references, level boundaries by hand, degenerate and missing boxes, torch.fx and TorchScript."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops import roi_pool as tv_roi_pool

from detection.modeling.poolers import PyramidPooler, SingleLevelPooler
from resnet_ops.roi_align import fpn_levels, multiscale_roi_align

STRIDES = [4, 8, 16, 32]


def pyramid(generator, channels=4, height=64, width=80, batch=2):
    """p2-p5 maps of a height x width image."""
    return {f"p{i + 2}": torch.randn(batch, channels, height // s, width // s, generator=generator)
            for i, s in enumerate(STRIDES)}


def square(size, x=10.0, y=20.0):
    return [x, y, x + size, y + size]


def random_boxes(counts, height, width, generator):
    """Boxes of 2 to 70 pixels a side, some crossing the border, for each image."""
    boxes = []
    for count in counts:
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width + 10.0, height + 10.0]) - 10
        boxes.append(torch.cat([corner, corner + 2 + torch.rand(count, 2, generator=generator) * 68], 1))
    return boxes


@pytest.mark.parametrize("impl", ["gather", "torchvision"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_single_level_pooler_is_torchvision_roi_align_or_roi_pool(impl, sampling_ratio):
    """RoIAlign at the map's scale with pixel-aligned sampling (aligned=True); RoIPool as torchvision's."""
    generator = torch.Generator().manual_seed(4)
    features = pyramid(generator)
    boxes = random_boxes((7, 4), 64, 80, generator)
    align = SingleLevelPooler("p3", 5, 8, sampling_ratio, "roi_align", impl)
    torch.testing.assert_close(align(features, boxes, [(64, 80)] * 2),
                               tv_roi_align(features["p3"], boxes, 5, 1 / 8, sampling_ratio, True),
                               rtol=0, atol=2e-6)
    pool = SingleLevelPooler("p4", 3, 16, sampling_ratio, "roi_pool", impl)
    assert torch.equal(pool(features, boxes, [(64, 80)] * 2), tv_roi_pool(features["p4"], boxes, 3, 1 / 16))


@pytest.mark.parametrize("impl", ["gather", "torchvision"])
def test_pyramid_pooler_equals_multiscale_roi_align(impl):
    """Images of two sizes in one padded batch; boxes of every level."""
    generator = torch.Generator().manual_seed(5)
    features = pyramid(generator, height=256, width=320)
    boxes = random_boxes((40, 25), 256, 320, generator)
    # Larger boxes for p3, p4 and p5 (sides from 112, 224 and 448 by the FPN paper's rule).
    boxes[0][:4] = torch.tensor([[10.0, 10.0, 160.0, 150.0], [0.0, 0.0, 300.0, 250.0], [-100.0, -90.0, 400.0, 380.0],
                                 [0.0, 0.0, 2.0, 3.0]])
    sizes = [(256, 320), (200, 240)]
    expected = MultiScaleRoIAlign(list(features), 7, 2)(features, boxes, sizes)
    ours = PyramidPooler(list(features), STRIDES, 7, 2, impl)(features, boxes, sizes)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-6)
    assert set(fpn_levels(torch.cat(boxes), STRIDES).tolist()) == {0, 1, 2, 3}  # every level used


@pytest.mark.parametrize("sampling_ratio", [0, 1])
def test_fpn_detectors_pool_with_the_configured_sampling_ratio(repo_root, sampling_ratio):
    """model.roi_head.sampling_ratio=0 (adaptive) reached an FPN detector as 2; the pooled features
    are torchvision's MultiScaleRoIAlign with the configured ratio."""
    from detection.config import load_detection_config
    from detection.modeling.build import build_model

    cfg = load_detection_config(f"{repo_root}/configs/shapes.yaml", [f"model.roi_head.sampling_ratio={sampling_ratio}"])
    pooler = build_model(cfg, 3, backbone_weights=False).roi_heads.pooler
    assert pooler.sampling_ratio == sampling_ratio
    generator = torch.Generator().manual_seed(6)
    features = pyramid(generator, height=256, width=320)
    boxes = random_boxes((30,), 256, 320, generator)
    expected = MultiScaleRoIAlign(list(features), 7, sampling_ratio)(features, boxes, [(256, 320)])
    torch.testing.assert_close(pooler(features, boxes, [(256, 320)]), expected, rtol=0, atol=2e-6)


def test_level_boundaries_by_hand():
    """Level k0 + floor(log2(sqrt(area) / 224)) with 224 at stride 16 (index 2 of p2-p5), clamped
    to the pyramid; a zero-area box goes to the finest level, a negative-area one to none (-1)."""
    boxes = torch.tensor([square(224), square(223.9), square(112), square(111.9), square(448), square(447.9),
                          square(5000), square(1), [0, 0, 0, 0], [5, 5, 5, 40], [10, 0, 4, 30], [0, 10, 30, 2],
                          [10, 10, 4, 2], [float("nan"), 0, 4, 4]])
    # The (-6, -8) box has a positive area, 48: the finest level, as in torchvision.
    expected = [2, 1, 1, 0, 3, 2, 3, 0, 0, 0, -1, -1, 0, -1]
    assert fpn_levels(boxes, STRIDES).tolist() == expected
    assert fpn_levels(boxes, STRIDES[1:]).tolist() == [1, 0, 0, 0, 2, 1, 2, 0, 0, 0, -1, -1, 0, -1]


@pytest.mark.parametrize("impl", ["gather", "torchvision"])
def test_boxes_without_a_level_give_zeros_as_torchvision(impl):
    """Negative widths or heights (a NaN size) pool to zeros, as in torchvision's MultiScaleRoIAlign,
    never to whatever the output buffer held."""
    generator = torch.Generator().manual_seed(0)
    features = pyramid(generator)
    boxes = [torch.tensor([[10.0, 10.0, 5.0, 20.0], [0, 0, 40, 30], [30, 5, 60, 1]]),
             torch.tensor([[8.0, 8.0, 20.0, 20.0], [50, 40, 10, 60]])]
    reference = MultiScaleRoIAlign(list(features), 7, 2)(features, boxes, [(64, 80)] * 2)
    for _ in range(3):
        # Leave freed memory full of NaNs where the output is likely to be allocated.
        del _
        poison = torch.full((5, 4, 7, 7), float("nan"))
        del poison
        ours = multiscale_roi_align(list(features.values()), boxes, STRIDES, 7, 2, impl=impl)
        assert torch.isfinite(ours).all()
        assert not ours[[0, 2, 4]].any()
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-6)


def test_pyramid_pooler_gradients_match_torchvision():
    generator = torch.Generator().manual_seed(1)
    features = pyramid(generator)
    # Boxes on and across the borders; the last two are large enough for p3 and p4.
    boxes = [torch.tensor([[0.0, 0.0, 79.0, 63.0], [3, 4, 20, 17], [-10, -5, 30, 90], [12, 9, 14, 11]]),
             torch.tensor([[40.0, 30.0, 41.0, 60.0], [7, 50, 70, 2], [-50, -60, 130, 120], [-100, -99, 200, 150]])]
    grad = torch.randn(8, 4, 7, 7, generator=generator)
    ours_in = {k: v.clone().requires_grad_() for k, v in features.items()}
    ref_in = {k: v.clone().requires_grad_() for k, v in features.items()}
    PyramidPooler(list(features), STRIDES, 7, 2, "auto")(ours_in, boxes, [(64, 80)] * 2).backward(grad)
    MultiScaleRoIAlign(list(features), 7, 2)(ref_in, boxes, [(64, 80)] * 2).backward(grad)
    reached = 0
    for name in features:
        # A level without boxes is skipped here (no gradient) and pooled with none in torchvision (zeros).
        ours = ours_in[name].grad if ours_in[name].grad is not None else torch.zeros_like(features[name])
        torch.testing.assert_close(ours, ref_in[name].grad, rtol=0, atol=1e-5)
        reached += bool(ours.any())
    assert reached == 3


def test_no_boxes_at_all():
    generator = torch.Generator().manual_seed(2)
    features = pyramid(generator, channels=3)
    pooler = PyramidPooler(list(features), STRIDES, 5, 2, "auto")
    assert pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)], [(64, 80)] * 2).shape == (0, 3, 5, 5)
    empty_batch = {name: f[:0] for name, f in features.items()}
    assert pooler(empty_batch, [], []).shape == (0, 3, 5, 5)
    single = SingleLevelPooler("p3", 5, 8, 0, "roi_align", "auto")
    assert single(empty_batch, [], []).shape == (0, 3, 5, 5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("pooler", [SingleLevelPooler("p3", 5, 8, 0, "roi_align", "auto"),
                                    PyramidPooler(["p2", "p3", "p4", "p5"], STRIDES, 5, 2, "auto")],
                         ids=["single", "pyramid"])
def test_poolers_trace_with_fx_and_script(pooler):
    """torch.fx keeps RoIAlign as one call (any box count); scripted, torchvision's op gives the same."""
    generator = torch.Generator().manual_seed(3)
    features = pyramid(generator)
    traced = torch.fx.symbolic_trace(pooler)
    scripted = torch.jit.script(pooler)
    for counts in ((3, 1), (9, 4)):
        boxes = [torch.rand(n, 2, generator=generator).repeat(1, 2) * 60 + torch.tensor([0, 0, 2.0, 2.0]) *
                 torch.rand(n, 1, generator=generator) * 40 for n in counts]
        expected = pooler(features, boxes, [(64, 80)] * 2)
        torch.testing.assert_close(traced(features, boxes, [(64, 80)] * 2), expected, rtol=0, atol=0)
        torch.testing.assert_close(scripted(features, boxes, [(64, 80)] * 2), expected, rtol=0, atol=2e-6)
    if isinstance(pooler, SingleLevelPooler):  # the scripted pooler is torchvision's aligned op
        torch.testing.assert_close(scripted(features, boxes, [(64, 80)] * 2),
                                   tv_roi_align(features["p3"], boxes, 5, 1 / 8, 0, True), rtol=0, atol=0)


def test_the_paper_configs_pool_regions_by_roi_max_pooling(repo_root):
    """The paper's settings (configs/base_det_paper.yaml) build a C4 detector whose regions are RoI max
    pooled, 14x14 from res4 at stride 16: torchvision's roi_pool on the same map."""
    from detection.config import load_detection_config
    from detection.modeling.build import build_model

    cfg = load_detection_config(f"{repo_root}/configs/base_det_paper.yaml", [
        "model.backbone.depth=18", "model.backbone.base_width=8", "model.backbone.weights=null"])
    pooler = build_model(cfg, num_classes=2).roi_heads.pooler
    generator = torch.Generator().manual_seed(6)
    features = {"res4": torch.randn(2, 3, 6, 8, generator=generator)}
    boxes = random_boxes((5, 3), 96, 128, generator)
    assert torch.equal(pooler(features, boxes, [(96, 128)] * 2), tv_roi_pool(features["res4"], boxes, 14, 1 / 16))
