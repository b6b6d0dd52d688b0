"""The Fast R-CNN step against torchvision's RoIHeads (same pooler rule, head and predictor weights):
detections, losses and gradients, images without objects; the proposal sampling, the global
context and the detection selection by hand."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.ops import MultiScaleRoIAlign

from detection.modeling.box_coder import BoxCoder
from detection.modeling.box_heads import BoxPredictor, FCHead
from detection.modeling.matching import Matcher
from detection.modeling.poolers import PyramidPooler
from detection.modeling.roi_heads import RoIHeads, select_detections
from tests.detection.modeling.sampling_reference import PrioritySampler, seeded_targets

CHANNELS, RESOLUTION, FC_DIM, NUM_CLASSES = 4, 5, 16, 3
PADDED = (64, 96)
IMAGE_SIZES = [(64, 96), (50, 70)]
WEIGHTS = (10.0, 10.0, 5.0, 5.0)
EVERY_PROPOSAL = 10**6  # a sampling budget above the proposal count: every labelled RoI is sampled


def make_pair(batch_size=EVERY_PROPOSAL, fraction=0.25, score_thresh=0.05, nms_thresh=0.5, detections=100,
              global_context=False):
    """Our RoI heads and torchvision's with the same weights; the class scores spread out so that
    they are not tied."""
    torch.manual_seed(0)
    box_head = FCHead(CHANNELS, RESOLUTION, 2, FC_DIM)
    predictor = BoxPredictor(FC_DIM * (2 if global_context else 1), NUM_CLASSES)
    with torch.no_grad():
        predictor.cls_score.weight.normal_(std=0.5)
        predictor.bbox_pred.weight.normal_(std=0.05)
    heads = RoIHeads(PyramidPooler(["p2", "p3"], [4, 8], RESOLUTION, 2, "auto"), box_head, predictor,
                     Matcher(0.5, 0.5, False), batch_size_per_image=batch_size, positive_fraction=fraction,
                     bbox_reg_weights=WEIGHTS, smooth_l1_beta=1 / 9, score_thresh=score_thresh,
                     nms_thresh=nms_thresh, detections_per_img=detections, global_context=global_context)
    reference_head = TwoMLPHead(CHANNELS * RESOLUTION**2, FC_DIM)
    reference_head.load_state_dict(box_head.state_dict())
    reference_predictor = FastRCNNPredictor(predictor.cls_score.in_features, NUM_CLASSES + 1)
    reference_predictor.load_state_dict(predictor.state_dict())
    reference = TorchvisionRoIHeads(MultiScaleRoIAlign(["p2", "p3"], RESOLUTION, 2), reference_head,
                                    reference_predictor, 0.5, 0.5, batch_size, fraction, WEIGHTS, score_thresh,
                                    nms_thresh, detections)
    return heads, reference


def feature_maps(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.randn(2, CHANNELS, PADDED[0] // s, PADDED[1] // s, generator=generator))
                       for name, s in (("p2", 4), ("p3", 8)))


def random_boxes(count, size, generator):
    height, width = size
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width - 8.0, height - 8.0])
    extent = 6 + torch.rand(count, 2, generator=generator) * 40
    return torch.cat([corner, torch.minimum(corner + extent, torch.tensor([float(width), float(height)]))], 1)


def proposals(seed=2, counts=(30, 20)):
    generator = torch.Generator().manual_seed(seed)
    return [random_boxes(n, size, generator) for n, size in zip(counts, IMAGE_SIZES)]


def targets():
    return [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[5.0, 5.0, 30.0, 45.0]]), "labels": torch.tensor([2])}]


def test_detections_equal_torchvision():
    """Softmax scores, class-specific boxes decoded with (10, 10, 5, 5), clipped to each image, the
    score threshold, per-class NMS and the cut to detections_per_img."""
    heads, reference = make_pair(detections=12)
    heads.eval()
    reference.eval()
    features, boxes = feature_maps(), proposals()
    with torch.no_grad():
        ours, _ = heads(features, boxes, IMAGE_SIZES)
        theirs, _ = reference(features, boxes, IMAGE_SIZES)
    for image, (mine, expected) in enumerate(zip(ours, theirs)):
        assert len(expected["boxes"]) == 12
        assert torch.equal(mine["labels"], expected["labels"])
        torch.testing.assert_close(mine["scores"], expected["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(mine["boxes"], expected["boxes"], rtol=0, atol=1e-4)
        assert mine["boxes"][:, 2].max() <= IMAGE_SIZES[image][1]


def test_losses_and_gradients_equal_torchvision_when_every_proposal_is_sampled():
    heads, reference = make_pair()
    heads.train()
    reference.train()
    features, boxes = feature_maps(), proposals()
    _, losses = heads(features, boxes, IMAGE_SIZES, targets())
    _, reference_losses = reference(features, boxes, IMAGE_SIZES, targets())
    torch.testing.assert_close(losses["loss_cls"], reference_losses["loss_classifier"], rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_box"], reference_losses["loss_box_reg"], rtol=1e-6, atol=0)
    assert losses["loss_box"] > 1e-3  # not two zeros compared
    (losses["loss_cls"] + losses["loss_box"]).backward()
    (reference_losses["loss_classifier"] + reference_losses["loss_box_reg"]).backward()
    for name in ("fc6.weight", "fc7.weight"):
        torch.testing.assert_close(heads.box_head.get_parameter(name).grad,
                                   reference.box_head.get_parameter(name).grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(heads.predictor.bbox_pred.weight.grad, reference.box_predictor.bbox_pred.weight.grad,
                               rtol=1e-4, atol=1e-7)


def test_sampled_losses_equal_torchvision_on_the_same_samples():
    """16 RoIs per image, a quarter positive at most: torchvision's losses on the RoIs that a per-image
    reference of our sampling rule picks from the same seeds equal ours."""
    heads, reference = make_pair(batch_size=16, fraction=0.25)
    heads.train()
    reference.train()
    features, boxes = feature_maps(), proposals(counts=(60, 40))
    _, losses = heads(features, boxes, IMAGE_SIZES, seeded_targets(targets(), [3, 4]))
    reference.fg_bg_sampler = PrioritySampler([3, 4], 16, 0.25)
    _, reference_losses = reference(features, boxes, IMAGE_SIZES, targets())
    assert all(len(p) + len(n) == 16 and len(p) <= 4 for p, n in reference.fg_bg_sampler.drawn)
    assert sum(len(p) for p, _ in reference.fg_bg_sampler.drawn) > 0
    torch.testing.assert_close(losses["loss_cls"], reference_losses["loss_classifier"], rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_box"], reference_losses["loss_box_reg"], rtol=1e-6, atol=0)


def test_images_without_objects_have_zero_box_loss():
    """Every RoI of an image without objects is background: the classification loss is the mean of
    -log p(background), the box loss exactly 0 (with a gradient of zeros), as in torchvision."""
    heads, reference = make_pair()
    heads.train()
    reference.train()
    features, boxes = feature_maps(), proposals()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    _, losses = heads(features, boxes, IMAGE_SIZES, empty)
    _, reference_losses = reference(features, boxes, IMAGE_SIZES, empty)
    with torch.no_grad():
        logits, _ = heads.predictor(heads.box_head(MultiScaleRoIAlign(["p2", "p3"], RESOLUTION, 2)(
            features, boxes, IMAGE_SIZES)))
    torch.testing.assert_close(losses["loss_cls"], -F.log_softmax(logits, 1)[:, 0].mean())
    torch.testing.assert_close(losses["loss_cls"], reference_losses["loss_classifier"], rtol=1e-6, atol=0)
    assert float(losses["loss_box"].detach()) == 0.0 == float(reference_losses["loss_box_reg"].detach())
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert not heads.predictor.bbox_pred.weight.grad.any() and heads.predictor.cls_score.weight.grad.abs().sum() > 0


def test_sampling_adds_the_ground_truth_and_encodes_targets():
    """A hand-made image: two proposals, one GT box. The GT box joins the proposals (IoU 1, a
    positive), the proposal at IoU 0.6 is positive, the one at IoU 0 background; at most
    batch * fraction positives are kept."""
    heads, _ = make_pair(batch_size=4, fraction=0.5)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    near = torch.tensor([[0.0, 0.0, 10.0, 6.0]])  # IoU 60 / 100
    far = torch.tensor([[30.0, 30.0, 40.0, 40.0]])
    target = {"boxes": gt, "labels": torch.tensor([2])}
    sampled, labels, regression, valid = heads.sample_proposals([torch.cat([near, far])], [target])
    # A budget of four but three candidates: three slots, each a sample.
    assert valid.tolist() == [True, True, True]
    sampled = sampled[0]
    assert labels.tolist() == [2, 2, 0]
    by_box = {tuple(b.tolist()): i for i, b in enumerate(sampled)}
    assert set(by_box) == {(0.0, 0.0, 10.0, 6.0), (30.0, 30.0, 40.0, 40.0), (0.0, 0.0, 10.0, 10.0)}
    near_row = regression[by_box[(0.0, 0.0, 10.0, 6.0)]]
    # centre y moves from 3 to 5 on a 6-pixel-high box; the height grows by 10/6
    expected = torch.tensor([0.0, 10 * 2 / 6, 0.0, 5 * math.log(10 / 6)])
    torch.testing.assert_close(near_row, expected)
    assert not regression[by_box[(0.0, 0.0, 10.0, 10.0)]].any()
    # Three positives but room for 4 * 0.5 = 2: two kept, and the background fills the rest.
    _, labels, _, valid = heads.sample_proposals([torch.cat([near, near, far])], [target])
    assert sorted(labels[valid].tolist()) == [0, 2, 2]


def test_bg_iou_low_ignores_proposals_that_miss_every_object():
    """The R-CNN rule [bg_low, fg): proposals below bg_low are neither foreground nor background."""
    heads, _ = make_pair()
    heads.matcher = Matcher(0.5, 0.5, False, 0.1)
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    candidates = torch.tensor([[0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 0.5], [50.0, 50.0, 60.0, 60.0]])
    sampled, labels, _, valid = heads.sample_proposals([candidates], [gt])
    # IoU 0.3: background; IoU 0.05 and 0: ignored; the GT box itself: foreground.
    assert sorted(labels[valid].tolist()) == [0, 1] and int(valid.sum()) == 2
    assert sampled[0][valid].tolist() == [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0]]


def test_global_context_appends_the_whole_image_feature_to_every_region():
    heads, _ = make_pair(global_context=True)
    features, boxes = feature_maps(), proposals(counts=(3, 2))
    with torch.no_grad():
        combined = heads.region_features(features, boxes, IMAGE_SIZES)
        pooler = MultiScaleRoIAlign(["p2", "p3"], RESOLUTION, 2)
        regions = heads.box_head(pooler(features, boxes, IMAGE_SIZES))
        whole = [torch.tensor([[0.0, 0.0, float(w), float(h)]]) for h, w in IMAGE_SIZES]
        context = heads.box_head(pooler(features, whole, IMAGE_SIZES))
    expected = torch.cat([regions, context[[0, 0, 0, 1, 1]]], 1)
    torch.testing.assert_close(combined, expected, rtol=0, atol=1e-6)
    assert not torch.equal(context[0], context[1])


def test_select_detections_by_hand():
    """Background column dropped, threshold strictly above score_thresh, per-class NMS (the same box
    survives in two classes), boxes under 0.01 pixel dropped, then the best detections_per_img."""
    boxes = torch.tensor([
        [[0, 0, 1, 1], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]],
        [[0, 0, 1, 1], [1.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]],
        [[0, 0, 1, 1], [5.0, 5.0, 5.005, 9.0], [40.0, 40.0, 50.0, 50.0]],
    ])
    scores = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.05, 0.9, 0.05]])
    detections = select_detections(scores, boxes, score_thresh=0.05, nms_thresh=0.5, detections_per_img=10)
    # class 1: box 0 (0.6) suppresses box 1 (0.5, IoU 0.9); the 0.005-wide box (0.9) is dropped.
    # class 2: box 0 (0.3) and box 1 (0.3) do not overlap; box 2 has 0.05, not above the threshold.
    assert detections["labels"].tolist() == [1, 2, 2]
    torch.testing.assert_close(detections["scores"], torch.tensor([0.6, 0.3, 0.3]))
    assert detections["boxes"][0].tolist() == [0.0, 0.0, 10.0, 10.0]
    top = select_detections(scores, boxes, 0.05, 0.5, detections_per_img=1)
    assert top["labels"].tolist() == [1] and top["scores"].tolist() == pytest.approx([0.6])


def test_losses_use_the_class_of_each_positive_by_hand():
    """loss_cls is the mean cross-entropy; loss_box the smooth L1 (beta 1/9) of each positive's own
    class deltas, summed and divided by all sampled RoIs."""
    heads, _ = make_pair()
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 3.0], [1.0, 1.0, 1.0, 1.0]])
    deltas = torch.zeros(3, 16)
    deltas[1, 12:16] = torch.tensor([0.05, -0.5, 0.0, 0.2])  # class 3's deltas of RoI 1
    deltas[1, 4:8] = 7.0  # another class's deltas: not in the loss
    labels = torch.tensor([0, 3, 0])
    targets_ = torch.zeros(3, 4)
    losses = heads.losses(logits, deltas, labels, targets_)
    expected_cls = -(F.log_softmax(logits, 1)[torch.arange(3), labels]).mean()
    beta = 1 / 9
    # |0.05| < beta: 0.5 x^2 / beta; |-0.5|, |0.2| >= beta: |x| - beta / 2
    expected_box = (0.5 * 0.05**2 / beta + (0.5 - beta / 2) + (0.2 - beta / 2)) / 3
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_box"], torch.tensor(expected_box))


def test_decode_uses_the_box_coder_weights():
    heads, _ = make_pair()
    proposal = [torch.tensor([[10.0, 10.0, 30.0, 50.0]])]
    deltas = torch.tensor([[0.0] * 4 + [10.0, 0.0, 0.0, 5 * math.log(0.5)] + [0.0] * 8])  # class 1
    scores, boxes = heads.decode(torch.zeros(1, 4), deltas, proposal, [(100, 100)])
    # dx = 10 / 10 = 1 width (20 px) to the right; the height halves (40 -> 20) around its centre 30
    torch.testing.assert_close(boxes[0][0, 1], torch.tensor([30.0, 20.0, 50.0, 40.0]))
    torch.testing.assert_close(scores[0], torch.full((1, 4), 0.25))
    assert torch.equal(boxes[0][0, 1], BoxCoder(WEIGHTS).decode(deltas[:, 4:8], proposal[0])[0])


@pytest.mark.parametrize("counts", [(0, 20), (0, 0)])
def test_images_without_proposals_get_no_detections(counts):
    """An image whose proposals were all filtered out (a random detector on a small image) gets
    empty detections; the other images' detections are those of a batch without it."""
    heads, reference = make_pair(detections=12)
    heads.eval()
    reference.eval()
    features, boxes = feature_maps(), proposals(counts=counts)
    with torch.no_grad():
        ours, _ = heads(features, boxes, IMAGE_SIZES)
        theirs, _ = reference(features, boxes, IMAGE_SIZES)
    assert [len(d["boxes"]) for d in ours] == [len(d["boxes"]) for d in theirs]
    assert ours[0]["boxes"].shape == (0, 4) and ours[0]["scores"].shape == (0,)
    for mine, expected in zip(ours, theirs):
        assert torch.equal(mine["labels"], expected["labels"])
        torch.testing.assert_close(mine["boxes"], expected["boxes"], rtol=0, atol=1e-4)


def test_the_paper_configs_shape_the_box_losses_as_py_faster_rcnn(repo_root):
    """py-faster-rcnn's RPN box loss is smooth L1 with sigma 3 (beta 1/9) and its Fast R-CNN box loss
    Caffe's default sigma 1 (beta 1); the RoI head kept torchvision's 1/9 in the paper's configs."""
    from detection.config import load_detection_config
    from detection.modeling.build import build_model

    cfg = load_detection_config(f"{repo_root}/configs/base_det_paper.yaml", [
        "model.backbone.depth=18", "model.backbone.base_width=8", "model.backbone.weights=null"])
    model = build_model(cfg, num_classes=2)
    assert model.roi_heads.smooth_l1_beta == 1.0
    assert model.rpn.smooth_l1_beta == pytest.approx(1 / 9)
