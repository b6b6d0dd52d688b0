"""The region proposal network against torchvision's (same weights, anchors and targets): the
flattening order, proposals in training and test mode, the losses and their gradients; and what
torchvision has not (empty images, the border rule, crowd regions, min_size, the loss weight) by hand."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TorchvisionRPN
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from detection.modeling.anchors import AnchorGenerator
from detection.modeling.matching import Matcher
from detection.modeling.rpn import RegionProposalNetwork, RPNHead, crossing_border, flatten_level
from tests.detection.modeling.sampling_reference import PrioritySampler, seeded_targets

SIZES = [[16, 32], [32, 64]]  # per level (strides 8 and 16)
RATIOS = [0.5, 1.0, 2.0]
CHANNELS = 8
PADDED = (64, 96)  # the padded batch: maps of 8x12 and 4x6
IMAGE_SIZES = [(64, 96), (50, 70)]
ALL_ANCHORS = 10**6  # a sampling budget above the anchor count: every labelled anchor is sampled


def make_pair(pre_nms=(40, 30), post_nms=(25, 20), nms_thresh=0.7, batch_size=ALL_ANCHORS, fraction=0.5, **ours):
    """Our RPN and torchvision's with the same head weights (spread out, so that scores are not tied).
    ``ours``: settings torchvision does not have, its fixed behaviour by default."""
    ours = {"min_size": 0.0, "smooth_l1_beta": 1 / 9, "loss_weight": 1.0, "boundary_thresh": -1.0, **ours}
    generator = torch.Generator().manual_seed(0)
    head = RPNHead(CHANNELS, len(RATIOS) * len(SIZES[0]), 0)
    with torch.no_grad():
        for layer in (head.conv, head.cls_logits, head.bbox_pred):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.3)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
    rpn = RegionProposalNetwork(["p3", "p4"], head, AnchorGenerator(SIZES, RATIOS), Matcher(0.7, 0.3, True),
                                batch_size_per_image=batch_size, positive_fraction=fraction, pre_nms_topk=pre_nms,
                                post_nms_topk=post_nms, nms_thresh=nms_thresh, **ours)
    reference_head = TorchvisionRPNHead(CHANNELS, head.cls_logits.out_channels)
    reference_head.load_state_dict({"conv.0.0.weight": head.conv.weight, "conv.0.0.bias": head.conv.bias,
                                    **{f"{name}.{p}": getattr(head, name).state_dict()[p]
                                       for name in ("cls_logits", "bbox_pred") for p in ("weight", "bias")}})
    reference = TorchvisionRPN(TorchvisionAnchors(tuple(tuple(s) for s in SIZES), (tuple(RATIOS),) * len(SIZES)),
                               reference_head, 0.7, 0.3, batch_size, fraction,
                               {"training": pre_nms[0], "testing": pre_nms[1]},
                               {"training": post_nms[0], "testing": post_nms[1]}, nms_thresh)
    return rpn, reference


def feature_maps(seed=1, batch=2):
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.randn(batch, CHANNELS, PADDED[0] // s, PADDED[1] // s, generator=generator))
                       for name, s in (("p3", 8), ("p4", 16)))


def targets():
    return [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]])},
            {"boxes": torch.tensor([[5.0, 5.0, 30.0, 45.0]])}]


def run_both(rpn, reference, features, with_targets):
    ours = rpn(PADDED, features, IMAGE_SIZES, targets() if with_targets else None)
    images = ImageList(torch.zeros(len(IMAGE_SIZES), 3, *PADDED), IMAGE_SIZES)
    theirs = reference(images, features, targets() if with_targets else None)
    return ours, theirs


def test_anchor_grid_by_hand():
    """One 32-pixel anchor of each ratio (height / width) centred on each cell corner of a 2x2 map
    at stride 16: ratio 0.5 is 45.25 x 22.63 pixels, rounded to [-23, -11, 23, 11]; positions
    row-major, ratios within a position."""
    cells = AnchorGenerator([[32]], [0.5, 1.0, 2.0]).cell_anchors[0]
    assert cells.tolist() == [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    anchors = AnchorGenerator([[32]], [1.0])((32, 32), [(2, 2)], torch.device("cpu"))[0]
    assert anchors.tolist() == [[-16, -16, 16, 16], [0, -16, 32, 16], [-16, 0, 16, 32], [0, 0, 32, 32]]


def test_flattening_follows_torchvision_order():
    generator = torch.Generator().manual_seed(2)
    logits = [torch.randn(2, 3, 4, 5, generator=generator), torch.randn(2, 3, 2, 3, generator=generator)]
    deltas = [torch.randn(2, 12, 4, 5, generator=generator), torch.randn(2, 12, 2, 3, generator=generator)]
    expected_logits, expected_deltas = concat_box_prediction_layers(logits, deltas)  # (N * total, 1), (N * total, 4)
    flat = [flatten_level(lg, dt) for lg, dt in zip(logits, deltas)]
    assert torch.equal(torch.cat([f[0] for f in flat], 1).reshape(-1, 1), expected_logits)
    assert torch.equal(torch.cat([f[1] for f in flat], 1).reshape(-1, 4), expected_deltas)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_proposals_equal_torchvision(mode):
    """Per-level top-k, decoding, clipping to each image (not the padded batch), NMS per level and
    the per-image cut, with the (train, test) numbers of the mode."""
    rpn, reference = make_pair()
    getattr(rpn, mode)()
    getattr(reference, mode)()
    with torch.no_grad():
        (ours, _), (theirs, _) = run_both(rpn, reference, feature_maps(), with_targets=mode == "train")
    expected_count = 25 if mode == "train" else 20
    if mode == "train":  # padded to the post-NMS count, with a mask
        assert ours.boxes.shape[1] == expected_count
        ours = ours.per_image()
    for image, (mine, reference_boxes) in enumerate(zip(ours, theirs)):
        assert len(reference_boxes) == expected_count
        torch.testing.assert_close(mine, reference_boxes, rtol=0, atol=1e-4)
        height, width = IMAGE_SIZES[image]
        assert mine[:, 2].max() <= width and mine[:, 3].max() <= height


def test_losses_and_gradients_equal_torchvision_when_every_anchor_is_sampled():
    rpn, reference = make_pair()
    rpn.train()
    reference.train()
    features = feature_maps()
    (_, losses), (_, reference_losses) = run_both(rpn, reference, features, with_targets=True)
    torch.testing.assert_close(losses["loss_rpn_cls"], reference_losses["loss_objectness"], rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_rpn_box"], reference_losses["loss_rpn_box_reg"], rtol=1e-6, atol=0)
    assert losses["loss_rpn_box"] > 1e-3 and losses["loss_rpn_cls"] > 0.1  # not two zeros compared
    (losses["loss_rpn_cls"] + losses["loss_rpn_box"]).backward()
    (reference_losses["loss_objectness"] + reference_losses["loss_rpn_box_reg"]).backward()
    torch.testing.assert_close(rpn.head.conv.weight.grad, reference.head.conv[0][0].weight.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(rpn.head.bbox_pred.weight.grad, reference.head.bbox_pred.weight.grad, rtol=1e-4,
                               atol=1e-7)


def test_sampled_losses_equal_torchvision_on_the_same_samples():
    """32 anchors per image, a quarter positive at most: torchvision's losses on the anchors that a
    per-image reference of our sampling rule picks (the highest priorities drawn from each image's
    seed) equal ours; another seed draws other anchors."""
    rpn, reference = make_pair(batch_size=32, fraction=0.25)
    rpn.train()
    reference.train()
    features = feature_maps(seed=3)
    _, losses = rpn(PADDED, features, IMAGE_SIZES, seeded_targets(targets(), [7, 8]))
    reference.fg_bg_sampler = PrioritySampler([7, 8], 32, 0.25)
    _, reference_losses = reference(ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES), features, targets())
    positives = [len(p) for p, _ in reference.fg_bg_sampler.drawn]
    assert 0 < min(positives) and max(positives) <= 8
    assert all(len(p) + len(n) == 32 for p, n in reference.fg_bg_sampler.drawn)
    torch.testing.assert_close(losses["loss_rpn_cls"], reference_losses["loss_objectness"], rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_rpn_box"], reference_losses["loss_rpn_box_reg"], rtol=1e-6, atol=0)
    _, other = rpn(PADDED, features, IMAGE_SIZES, seeded_targets(targets(), [9, 10]))
    assert abs(float(other["loss_rpn_cls"].detach() - losses["loss_rpn_cls"].detach())) > 1e-4


def image_logits_and_anchors(rpn, features, image=0):
    """Every anchor of one image with its objectness logit, in the RPN's order."""
    maps = [features[name] for name in rpn.in_features]
    logits, deltas = rpn.head(maps)
    flat = torch.cat([flatten_level(lg, dt)[0] for lg, dt in zip(logits, deltas)], 1)[image]
    anchors = torch.cat(rpn.anchor_generator(PADDED, [m.shape[-2:] for m in maps], torch.device("cpu")))
    return flat, anchors


def test_an_image_without_objects_has_zero_box_loss_and_background_objectness():
    """Every anchor is background: the objectness loss is the mean of softplus(logit) (the BCE of
    label 0), the box loss exactly 0 and still part of the graph, as torchvision computes it."""
    rpn, reference = make_pair()
    rpn.train()
    reference.train()
    features = feature_maps(batch=1)
    empty = [{"boxes": torch.zeros(0, 4)}]
    _, losses = rpn(PADDED, features, [PADDED], empty)
    _, reference_losses = reference(ImageList(torch.zeros(1, 3, *PADDED), [PADDED]), features, empty)
    logits, _ = image_logits_and_anchors(rpn, features)
    torch.testing.assert_close(losses["loss_rpn_cls"], F.softplus(logits).mean())
    torch.testing.assert_close(losses["loss_rpn_cls"], reference_losses["loss_objectness"], rtol=1e-6, atol=0)
    assert float(losses["loss_rpn_box"].detach()) == 0.0 == float(reference_losses["loss_rpn_box_reg"].detach())
    (losses["loss_rpn_cls"] + losses["loss_rpn_box"]).backward()
    assert not rpn.head.bbox_pred.weight.grad.any() and rpn.head.cls_logits.weight.grad.abs().sum() > 0


def test_boundary_thresh_ignores_anchors_crossing_the_border():
    """With boundary_thresh=t, anchors reaching more than t pixels outside the (unpadded) image are
    neither positive nor negative: the objectness loss of an empty image averages the others only."""
    features = feature_maps(batch=1)
    size = (56, 80)
    for thresh in (0.0, 8.0):
        rpn, _ = make_pair(boundary_thresh=thresh)
        rpn.train()
        _, losses = rpn(PADDED, features, [size], [{"boxes": torch.zeros(0, 4)}])
        logits, anchors = image_logits_and_anchors(rpn, features)
        inside = ((anchors[:, 0] >= -thresh) & (anchors[:, 1] >= -thresh) & (anchors[:, 2] <= size[1] + thresh)
                  & (anchors[:, 3] <= size[0] + thresh))
        assert 0 < int(inside.sum()) < len(anchors)
        torch.testing.assert_close(losses["loss_rpn_cls"], F.softplus(logits[inside]).mean())


def test_anchors_mostly_inside_a_crowd_region_are_not_background():
    features = feature_maps(batch=1)
    crowd = torch.tensor([[0.0, 0.0, 48.0, 40.0]])
    rpn, _ = make_pair()
    rpn.train()
    _, losses = rpn(PADDED, features, [PADDED], [{"boxes": torch.zeros(0, 4), "crowd_boxes": crowd}])
    logits, anchors = image_logits_and_anchors(rpn, features)
    # The fraction of each anchor's area inside the crowd box, computed here from the corners.
    width = (torch.minimum(anchors[:, 2], crowd[0, 2]) - torch.maximum(anchors[:, 0], crowd[0, 0])).clamp(min=0)
    height = (torch.minimum(anchors[:, 3], crowd[0, 3]) - torch.maximum(anchors[:, 1], crowd[0, 1])).clamp(min=0)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    background = width * height / area <= 0.5
    assert 0 < int((~background).sum()) < len(anchors) // 4
    torch.testing.assert_close(losses["loss_rpn_cls"], F.softplus(logits[background]).mean())


def test_loss_weight_scales_both_losses():
    features = feature_maps()
    losses = {}
    for weight in (1.0, 2.5):
        rpn, _ = make_pair(loss_weight=weight)
        rpn.train()
        losses[weight] = rpn(PADDED, features, IMAGE_SIZES, targets())[1]
    for name in ("loss_rpn_cls", "loss_rpn_box"):
        torch.testing.assert_close(losses[2.5][name], 2.5 * losses[1.0][name])


def test_min_size_drops_small_proposals_before_nms():
    """Boxes smaller than min_size never suppress others: what survives torchvision's NMS with both
    sides >= min_size survives ours too, and ours holds no smaller box."""
    min_size = 24.0
    rpn, reference = make_pair(post_nms=(1000, 1000), min_size=min_size)
    rpn.eval()
    reference.eval()
    with torch.no_grad():
        (ours, _), (theirs, _) = run_both(rpn, reference, feature_maps(), with_targets=False)
    for mine, reference_boxes in zip(ours, theirs):
        sides = torch.stack([mine[:, 2] - mine[:, 0], mine[:, 3] - mine[:, 1]], 1)
        assert (sides >= min_size).all()
        large = reference_boxes[((reference_boxes[:, 2:] - reference_boxes[:, :2]) >= min_size).all(1)]
        assert 0 < len(large) < len(reference_boxes)
        assert (box_iou(large, mine).max(1).values > 1 - 1e-5).all()


def test_no_losses_in_eval_mode():
    rpn, _ = make_pair()
    rpn.eval()
    with torch.no_grad():
        proposals, losses = rpn(PADDED, feature_maps(), IMAGE_SIZES, targets())
    assert losses == {} and [len(p) for p in proposals] == [20, 20]


def test_head_starts_from_the_papers_initialization():
    """N(0, 0.01) weights and zero biases (Faster R-CNN, section 3.1.3): the sample statistics of
    2304 conv weights are within a few standard errors of the distribution's."""
    torch.manual_seed(0)
    head = RPNHead(16, 9, 0)
    weight = head.conv.weight.detach()
    assert abs(float(weight.std()) - 0.01) < 0.0005
    assert abs(float(weight.mean())) < 0.0005
    for layer in (head.conv, head.cls_logits, head.bbox_pred):
        assert not layer.bias.any()
    assert RPNHead(16, 9, conv_channels=4).cls_logits.in_channels == 4


def test_crossing_border_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 80.0], [-0.5, 10.0, 20.0, 20.0], [10.0, 10.0, 104.0, 20.0],
                          [10.0, -3.0, 20.0, 20.0], [10.0, 10.0, 20.0, 81.0]])
    assert crossing_border(boxes, (80, 100), 0.0).tolist() == [False, True, True, True, True]
    assert crossing_border(boxes, (80, 100), 3.0).tolist() == [False, False, True, False, False]


# Hand-built anchors in a 100x80 image (width x height) and their labels, worked out by hand. GT 0
# = A exactly (IoU 1). GT 1 lies on the right border: B crosses it by 4 px with IoU 36*40 / (2*1600 -
# 1440) = 0.82, E lies inside with IoU 25*40 / 1600 = 0.625 (between the thresholds). C has IoU 100 /
# 1900 = 0.05 with GT 0: background. D crosses the top-left corner by 30 px and overlaps nothing.
BORDER_ANCHORS = torch.tensor([[10.0, 10.0, 50.0, 50.0],    # A
                               [64.0, 20.0, 104.0, 60.0],   # B
                               [75.0, 20.0, 100.0, 60.0],   # E
                               [0.0, 0.0, 20.0, 20.0],      # C
                               [-30.0, -30.0, 10.0, 10.0]])  # D
BORDER_GT = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 20.0, 100.0, 60.0]])


@pytest.mark.parametrize("thresh, expected", [
    (-1.0, [1, 1, -1, 0, 0]),  # every anchor kept: B is GT 1's positive, E is between the thresholds
    (0.0, [1, -1, 1, 0, -1]),  # B and D ignored; E, GT 1's best anchor inside the image, becomes its positive
    (8.0, [1, 1, -1, 0, -1]),  # B crosses by 4 px only and is kept; D by 30 and is ignored
])
def test_anchors_crossing_the_border_are_ignored_and_left_out_of_the_matching(thresh, expected):
    rpn, _ = make_pair(boundary_thresh=thresh)
    matched, labels, _ = rpn.anchor_labels(BORDER_ANCHORS, [{"boxes": BORDER_GT}], [(80, 100)])
    matched, labels = matched[0], labels[0]
    assert labels.tolist() == expected
    positives = labels == 1
    assert matched[positives].tolist() == [0, 1]  # A to GT 0; B or E to GT 1


@pytest.mark.parametrize("training", [True, False])
def test_min_size_by_hand(training):
    """Zero deltas propose the anchors themselves: with min_size 16 (the reference's, in training and at
    test time alike) a box 15 px wide or 15.9 px high goes, a 16 x 16 one stays."""
    anchors = torch.tensor([[0.0, 0.0, 15.0, 40.0], [20.0, 20.0, 60.0, 60.0], [0.0, 50.0, 16.0, 66.0],
                            [70.0, 0.0, 90.0, 15.9]])
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    for min_size, kept in ((16.0, [1, 2]), (0.0, [0, 1, 2, 3])):
        rpn, _ = make_pair(min_size=min_size)
        rpn.train(training)
        proposals = rpn.propose([logits], [torch.zeros(1, 4, 4)], [anchors], [(100, 100)])
        if training:  # padded to the post-NMS count (here all 4 candidates), with a mask
            assert proposals.boxes.shape == (1, 4, 4)
            proposals = proposals.per_image()
        assert torch.equal(proposals[0], anchors[kept])
