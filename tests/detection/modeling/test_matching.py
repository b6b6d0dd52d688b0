"""Box coding, anchors, label assignment with crowd boxes and empty images, sampling."""

import math

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.image_list import ImageList

from detection.modeling.anchors import AnchorGenerator
from detection.modeling.box_coder import BoxCoder
from detection.modeling.matching import BACKGROUND, FOREGROUND, IGNORE, Matcher, sample_balanced


def test_box_coder_round_trip_and_hand_computed_case():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[5.0, 0.0, 25.0, 20.0]])
    deltas = coder.encode(reference, target)
    # centre moves 10 px on a 10 px wide box: tx = 1 (x10); width doubles: tw = log 2 (x5)
    assert torch.allclose(deltas, torch.tensor([[10.0, 0.0, 5 * math.log(2), 0.0]]))
    boxes = torch.rand(50, 2) * 100
    boxes = torch.cat([boxes, boxes + torch.rand(50, 2) * 50 + 1], dim=1)
    refs = torch.rand(50, 2) * 100
    refs = torch.cat([refs, refs + torch.rand(50, 2) * 50 + 1], dim=1)
    assert torch.allclose(coder.decode(coder.encode(refs, boxes), refs), boxes, atol=1e-3)


def test_decode_clamps_huge_sizes():
    coder = BoxCoder()
    box = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    # exp(100) would overflow; the log-size delta is capped at log(1000 / 16): a 1000-pixel box
    # around the reference's centre (8, 8).
    torch.testing.assert_close(box, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]), rtol=0, atol=1e-3)


def test_half_precision_deltas_decode_in_float32():
    """Under autocast the RPN head's deltas are bfloat16: decoded in their dtype, an anchor at x = 1000
    became 1000 or 1004, and the boxes came out 4-8 pixels apart."""
    coder = BoxCoder()
    anchors = torch.tensor([[998.0, 501.0, 1130.0, 633.0], [37.0, 41.0, 301.0, 170.0]])
    deltas = torch.tensor([[0.013, -0.021, 0.05, -0.03], [0.2, 0.1, -0.4, 0.3]]).to(torch.bfloat16)
    boxes = coder.decode(deltas, anchors)
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(boxes, coder.decode(deltas.float(), anchors), rtol=0, atol=0)
    # By hand, with the bfloat16 values of the deltas: centre 1064 + dx * 132, width 132 * exp(dw).
    width = 132 * math.exp(float(deltas[0, 2]))
    assert abs(float(boxes[0, 0]) - (1064 + float(deltas[0, 0]) * 132 - width / 2)) < 1e-3


def test_anchors_match_torchvision_order_and_values():
    sizes, ratios = [[32], [64]], [0.5, 1.0, 2.0]
    ours = AnchorGenerator(sizes, ratios)
    reference = TorchvisionAnchors(tuple(tuple(s) for s in sizes), (tuple(ratios),) * 2)
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    features = [torch.zeros(1, 8, 16, 24), torch.zeros(1, 8, 8, 12)]
    expected = reference(images, features)[0]
    got = torch.cat(ours((64, 96), [f.shape[-2:] for f in features], torch.device("cpu")))
    assert torch.equal(got, expected)


def test_anchors_sit_at_the_networks_stride_where_the_padded_size_is_not_a_multiple_of_it():
    """P6 of an 800 x 1088 padded batch: 25 x 34 cells at P5, 13 x 17 at P6 (max pooling with stride 2
    keeps the odd row), cell (i, j) around (64 j, 64 i). torchvision's rule, padded // map, gives a
    stride of 800 // 13 = 61 rows: the last row's anchors sit at 732 rather than 768."""
    sizes, ratios = [[256], [512]], [1.0]
    feature_sizes = [(25, 34), (13, 17)]
    nominal = AnchorGenerator(sizes, ratios, strides=[32, 64])((800, 1088), feature_sizes, torch.device("cpu"))
    torchvision_rule = AnchorGenerator(sizes, ratios)((800, 1088), feature_sizes, torch.device("cpu"))
    centres = [(level[:, :2] + level[:, 2:]) / 2 for level in nominal]
    assert centres[1][-1].tolist() == [64 * 16, 64 * 12]
    assert centres[1][-18].tolist() == [64 * 16, 64 * 11]  # the last cell of the row above
    assert ((torchvision_rule[1][:, :2] + torchvision_rule[1][:, 2:]) / 2)[-1].tolist() == [64 * 16, 61 * 12]
    assert torch.equal(nominal[0], torchvision_rule[0])  # 800 and 1088 are multiples of 32: the rules agree


def test_detectors_place_anchors_at_their_backbones_strides():
    """FPN levels 4..64 and C4's 16 from the backbone; the torchvision config keeps torchvision's rule.
    A C4 detector without padding (size_divisibility 1): res4 of a 601-pixel side has 38 cells, whose
    last is around 16 * 37 = 592 (the rule of padded // map would put it at 15 * 37 = 555)."""
    from detection.config import load_detection_config
    from detection.modeling.build import build_model
    from tests.conftest import ROOT

    fpn = build_model(load_detection_config(f"{ROOT}/configs/shapes.yaml"), 3, backbone_weights=False)
    assert fpn.rpn.anchor_generator.strides == [4, 8, 16, 32, 64]
    tv = build_model(load_detection_config(f"{ROOT}/configs/tv_fasterrcnn_r50_fpn.yaml"), 90, backbone_weights=False)
    assert tv.rpn.anchor_generator.strides is None
    c4_cfg = load_detection_config(f"{ROOT}/configs/base_det.yaml", [
        "model.backbone.depth=18", "model.backbone.base_width=8", "input.size_divisibility=1"])
    c4 = build_model(c4_cfg, 3, backbone_weights=False).eval()
    assert c4.rpn.anchor_generator.strides == [16]
    with torch.no_grad():
        res4 = c4.backbone(torch.zeros(1, 3, 601, 450))["res4"]
    assert res4.shape[-2:] == (38, 29)
    anchors = c4.rpn.anchor_generator((601, 450), [res4.shape[-2:]], torch.device("cpu"))[0]
    last_centre = (anchors[-1, :2] + anchors[-1, 2:]) / 2
    assert last_centre.tolist() == [16 * 28, 16 * 37]


def test_c4_anchor_shapes_are_the_paper_ones():
    anchors = AnchorGenerator([[64, 128, 256, 512]], [0.5, 1.0, 2.0]).cell_anchors[0]
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    assert len(anchors) == 12
    areas = (widths * heights).sqrt()
    for size in (64, 128, 256, 512):
        assert ((areas - size).abs() / size < 0.02).sum() == 3


def test_matcher_thresholds_low_quality_and_crowd():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    crowd = torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    candidates = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],      # IoU 1 -> foreground
        [0.0, 0.0, 10.0, 16.0],      # IoU 0.625 -> between thresholds: ignored
        [50.0, 50.0, 60.0, 60.0],    # IoU 0 -> background
        [120.0, 120.0, 150.0, 150.0],  # background by IoU, but inside a crowd region -> ignored
        [190.0, 190.0, 260.0, 260.0],  # overlaps the crowd region a little -> background
    ])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality=False)(candidates, gt, crowd)
    assert labels.tolist() == [FOREGROUND, IGNORE, BACKGROUND, IGNORE, BACKGROUND]
    assert matched[0] == 0


def test_low_quality_matches_give_every_object_an_anchor():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    candidates = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [60.0, 60.0, 70.0, 70.0]])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality=True)(candidates, gt)
    assert labels.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND]
    assert matched[:2].tolist() == [0, 1]


def test_empty_image_is_all_background():
    matched, labels = Matcher(0.7, 0.3, allow_low_quality=True)(torch.rand(5, 4) * 10 + torch.tensor([0, 0, 11, 11]),
                                                                torch.zeros(0, 4))
    assert (labels == BACKGROUND).all()


def test_balanced_sampling_caps_positives():
    labels = torch.tensor([FOREGROUND] * 200 + [BACKGROUND] * 1000 + [IGNORE] * 50)
    positive, negative = sample_balanced(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert len(positive) == 128 and len(negative) == 128
    assert (labels[positive] == FOREGROUND).all() and (labels[negative] == BACKGROUND).all()
    few = torch.tensor([FOREGROUND] * 3 + [BACKGROUND] * 1000)
    positive, negative = sample_balanced(few, 256, 0.5)
    assert len(positive) == 3 and len(negative) == 253
    again = sample_balanced(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], sample_balanced(labels, 256, 0.5, torch.Generator().manual_seed(0))[0])


def test_sampling_from_a_labelled_row_by_hand():
    """Six background, three foreground, two ignored candidates and a budget of 4 at a quarter
    positive: one positive among the three, three negatives among the six, none of the ignored."""
    labels = torch.tensor([BACKGROUND] * 6 + [FOREGROUND] * 3 + [IGNORE] * 2)
    for seed in range(5):
        positive, negative = sample_balanced(labels, 4, 0.25, torch.Generator().manual_seed(seed))
        assert len(positive) == 1 and 6 <= int(positive[0]) <= 8
        assert len(set(negative.tolist())) == 3 and set(negative.tolist()) <= set(range(6))


def test_low_quality_matches_keep_ties_and_the_best_gt():
    """Two anchors tie for the best IoU (0.5) with GT 0: both become foreground, though below 0.7;
    an anchor claimed by GT 1 is matched to the GT it overlaps most."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 40.0, 10.0]])
    candidates = torch.tensor([
        [0.0, 0.0, 10.0, 20.0],    # IoU 0.5 with GT 0
        [0.0, -10.0, 10.0, 10.0],  # IoU 0.5 with GT 0: a tie
        [0.0, 0.0, 5.0, 10.0],     # IoU 0.5 with GT 0 too
        [15.0, 0.0, 35.0, 10.0],   # IoU 0.6 with GT 1, its best
        [60.0, 0.0, 70.0, 10.0],   # no overlap: background
    ])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality=True)(candidates, gt)
    assert labels.tolist() == [FOREGROUND, FOREGROUND, FOREGROUND, FOREGROUND, BACKGROUND]
    assert matched[:4].tolist() == [0, 0, 0, 1]
    _, strict = Matcher(0.7, 0.3, allow_low_quality=False)(candidates, gt)
    assert strict.tolist() == [IGNORE, IGNORE, IGNORE, IGNORE, BACKGROUND]


def test_fpn_top_down_sum_in_place_equals_torchvision():
    """The in-place top-down sum (a broadcast for exact 2x) gives torchvision's FPN outputs."""
    from collections import OrderedDict

    import torch.nn.functional as F

    from backbones import build_resnet
    from detection.modeling.backbone import ResNetFPN, add_upsampled_

    generator = torch.Generator().manual_seed(0)
    for top_size, size in (((5, 7), (10, 14)), ((5, 7), (9, 13))):  # exact 2x, and not
        lateral = torch.randn(2, 8, *size, generator=generator).contiguous(memory_format=torch.channels_last)
        top = torch.randn(2, 8, *top_size, generator=generator)
        expected = lateral + F.interpolate(top, size=size, mode="nearest")
        assert torch.equal(add_upsampled_(lateral.clone(), top), expected)
    torch.manual_seed(0)
    stages = ["res2", "res3", "res4", "res5"]
    model = ResNetFPN(build_resnet(18, out_features=stages), stages, out_channels=32).eval()
    x = torch.randn(1, 3, 128, 160, generator=generator)
    with torch.no_grad():
        ours = model(x)
        features = model.body(x)
        reference = model.fpn(OrderedDict((name, features[name]) for name in model.in_features))
    assert list(ours) == ["p2", "p3", "p4", "p5", "p6"]
    for ours_map, reference_map in zip(ours.values(), reference.values()):
        assert torch.allclose(ours_map, reference_map, atol=1e-6)
