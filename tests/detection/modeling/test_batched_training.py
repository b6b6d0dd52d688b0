"""The training losses of the batched label assignment and sampling against a per-image reference.

The reference below is the detector's former per-image code (a loop over the images for anchor
matching, sampling, target encoding and the losses), kept here and not in the library. Its sampling
takes the same rule from the same streams: each image's candidates with the highest uniform
priorities drawn from its own generator, sorted in Python. Whole detectors on synthetic shapes
images, in one batch: images of different sizes (padding), one without objects, one with many,
crowd regions, and the border rule.
"""

import copy
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from torchvision.ops import nms as torchvision_nms

from detection.config import load_detection_config
from detection.data.shapes import CLASSES, render_image
from detection.modeling import matching
from detection.modeling import roi_heads as roi_heads_module
from detection.modeling import rpn as rpn_module
from detection.modeling.build import build_model
from detection.modeling.matching import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    Matcher,
    batched_box_iou,
    intersection_over_first_area,
    sample_balanced_batch,
)
from detection.modeling.rpn import RegionProposalNetwork, crossing_border

NUM_CLASSES = len(CLASSES)


# -- the per-image reference ----------------------------------------------------------------------
def reference_match(matcher, candidates, gt_boxes, crowd_boxes=None):
    """One image's (matched GT index, label) as the per-image Matcher computed them."""
    num = candidates.shape[0]
    matched = torch.zeros(num, dtype=torch.int64)
    if gt_boxes.numel() == 0:
        labels = torch.zeros(num, dtype=torch.int64)
    else:
        iou = box_iou(gt_boxes, candidates)
        best_iou, matched = iou.max(dim=0)
        labels = torch.full((num,), IGNORE, dtype=torch.int64)
        labels[(best_iou < matcher.bg_iou_thresh) & (best_iou >= matcher.bg_iou_low)] = BACKGROUND
        labels[best_iou >= matcher.fg_iou_thresh] = FOREGROUND
        if matcher.allow_low_quality:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            claimed = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            labels[claimed] = FOREGROUND
    if crowd_boxes is not None and crowd_boxes.numel() > 0:
        in_crowd = intersection_over_first_area(candidates, crowd_boxes).max(dim=1).values > matcher.crowd_ioa
        labels[in_crowd & (labels == BACKGROUND)] = IGNORE
    return matched, labels


def reference_sample(labels, batch_size, fraction, priorities):
    """One image's sampled positives and negatives: the highest priorities of each kind, in Python."""
    order = sorted(range(len(labels)), key=lambda i: -float(priorities[i]))
    positives = [i for i in order if labels[i] == FOREGROUND][: int(batch_size * fraction)]
    negatives = [i for i in order if labels[i] == BACKGROUND][: batch_size - len(positives)]
    return torch.tensor(positives, dtype=torch.int64), torch.tensor(negatives, dtype=torch.int64)


def reference_rpn_losses(self, logits, deltas, anchors, image_sizes, targets):
    sampled_logits, sampled_labels, pos_deltas, pos_targets = [], [], [], []
    num_sampled = 0
    for image, (target, size) in enumerate(zip(targets, image_sizes)):
        priorities = torch.rand(len(anchors), generator=target["generator"])
        if self.boundary_thresh < 0:
            matched, labels = reference_match(self.matcher, anchors, target["boxes"], target.get("crowd_boxes"))
        else:
            inside = ~crossing_border(anchors, size, self.boundary_thresh)
            matched = torch.zeros(len(anchors), dtype=torch.int64)
            labels = torch.full((len(anchors),), IGNORE, dtype=torch.int64)
            matched[inside], labels[inside] = reference_match(self.matcher, anchors[inside], target["boxes"],
                                                              target.get("crowd_boxes"))
        positive, negative = reference_sample(labels, self.batch_size_per_image, self.positive_fraction, priorities)
        sampled = torch.cat([positive, negative])
        num_sampled += sampled.numel()
        sampled_logits.append(logits[image, sampled])
        sampled_labels.append((labels[sampled] == FOREGROUND).to(logits.dtype))
        if positive.numel():
            pos_deltas.append(deltas[image, positive])
            pos_targets.append(self.box_coder.encode(anchors[positive], target["boxes"][matched[positive]]))
    objectness = F.binary_cross_entropy_with_logits(torch.cat(sampled_logits), torch.cat(sampled_labels),
                                                    reduction="sum") / max(num_sampled, 1)
    box = deltas.sum() * 0.0
    if pos_deltas:
        box = F.smooth_l1_loss(torch.cat(pos_deltas), torch.cat(pos_targets), beta=self.smooth_l1_beta,
                               reduction="sum") / max(num_sampled, 1)
    return {"loss_rpn_cls": objectness * self.loss_weight, "loss_rpn_box": box * self.loss_weight}


@torch.no_grad()
def reference_sample_proposals(self, proposals, targets):
    """Each image's candidates are its proposals, then its GT boxes; the proposal in slot j gets the
    image's j-th priority draw, GT box k the (P + k)-th, P the padded proposal width (the RPN's
    post-NMS count) and G the batch's largest GT count (at least 1)."""
    proposals, width = proposals
    gt_width = max(1, max(len(t["boxes"]) for t in targets))
    sampled_boxes, sampled_labels, sampled_targets = [], [], []
    for boxes, target in zip(proposals, targets):
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        draws = torch.rand(width + gt_width, generator=target["generator"])
        priorities = torch.cat([draws[: len(boxes)], draws[width: width + len(gt_boxes)]])
        boxes = torch.cat([boxes, gt_boxes])
        matched, match_labels = reference_match(self.matcher, boxes, gt_boxes, target.get("crowd_boxes"))
        positive, negative = reference_sample(match_labels, self.batch_size_per_image, self.positive_fraction,
                                              priorities)
        keep = torch.cat([positive, negative])
        labels = torch.zeros(keep.numel(), dtype=torch.int64)
        regression = torch.zeros(keep.numel(), 4)
        if positive.numel():
            labels[: positive.numel()] = gt_labels[matched[positive]]
            regression[: positive.numel()] = self.box_coder.encode(boxes[positive], gt_boxes[matched[positive]])
        sampled_boxes.append(boxes[keep])
        sampled_labels.append(labels)
        sampled_targets.append(regression)
    return sampled_boxes, torch.cat(sampled_labels), torch.cat(sampled_targets), None


def reference_roi_losses(self, logits, deltas, labels, regression_targets, valid=None):
    loss_cls = F.cross_entropy(logits.float(), labels)
    positive = torch.nonzero(labels > 0).flatten()
    deltas = deltas.float().view(deltas.shape[0], -1, 4)
    loss_box = F.smooth_l1_loss(deltas[positive, labels[positive]], regression_targets[positive],
                                beta=self.smooth_l1_beta, reduction="sum") / max(labels.numel(), 1)
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def per_image_proposals(rpn, logits, deltas, anchors, image_sizes, training_counts=None):
    """The RPN's proposals by its per-image form (its inference one) with the training counts."""
    rpn.train(False)
    try:
        return RegionProposalNetwork.propose(rpn, logits, deltas, anchors, image_sizes, training_counts=True)
    finally:
        rpn.train(True)


def per_image_proposals_and_width(rpn, logits, deltas, anchors, image_sizes, training_counts=None):
    """:func:`per_image_proposals` and the width they are padded to in a training step: the post-NMS
    count, or all candidates of an image where the levels hold fewer."""
    candidates = sum(min(rpn.pre_nms_topk[0], level.shape[1]) for level in logits)
    width = min(rpn.post_nms_topk[0], candidates)
    return per_image_proposals(rpn, logits, deltas, anchors, image_sizes), width


def per_image_copy(model):
    """``model`` with the reference's per-image training code in place of the batched one."""
    reference = copy.deepcopy(model)
    reference.rpn.propose = types.MethodType(per_image_proposals_and_width, reference.rpn)
    reference.rpn.losses = types.MethodType(reference_rpn_losses, reference.rpn)
    reference.roi_heads.sample_proposals = types.MethodType(reference_sample_proposals, reference.roi_heads)
    reference.roi_heads.losses = types.MethodType(reference_roi_losses, reference.roi_heads)
    return reference


# -- inputs ---------------------------------------------------------------------------------------
def shapes_batch():
    """Four shapes images of different sizes: many objects, none, a crowd region, a few objects."""
    samples = []
    for seed in (14, 0, 4, 1):
        rng = np.random.default_rng(seed)
        image, objects = render_image(rng)
        image = image[::2, ::2]  # half size: a quick test
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]).reshape(-1, 4) / 2
        labels = torch.tensor([o["category"] + 1 for o in objects], dtype=torch.int64)
        samples.append({"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), "boxes": boxes,
                        "labels": labels, "seed": 100 + seed})
    samples[1]["boxes"], samples[1]["labels"] = samples[1]["boxes"][:0], samples[1]["labels"][:0]
    samples[2]["crowd_boxes"] = torch.tensor([[0.0, 0.0, 60.0, 50.0]])
    return samples


def detector(**overrides):
    cfg = load_detection_config("configs/shapes.yaml", ["model.backbone.weights=null", "solver.channels_last=false",
                                                         *[f"{k}={v}" for k, v in overrides.items()]])
    torch.manual_seed(0)
    return build_model(cfg, NUM_CLASSES, backbone_weights=False).train()


def losses_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    losses = model(batch)
    sum(losses.values()).backward()
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


# -- the tests --------------------------------------------------------------------------------------
def test_the_shapes_batch_covers_the_cases():
    batch = shapes_batch()
    counts = [len(s["boxes"]) for s in batch]
    assert counts[1] == 0 and max(counts) >= 5 and min(c for c in counts if c) >= 1
    assert len({tuple(s["image"].shape) for s in batch}) > 1


@pytest.mark.parametrize("overrides", [{}, {"model.rpn.boundary_thresh": 0.0}])
def test_batched_losses_and_gradients_equal_the_per_image_reference(overrides):
    model = detector(**overrides)
    reference = per_image_copy(model)
    losses, gradients = losses_and_gradients(model, shapes_batch())
    expected_losses, expected_gradients = losses_and_gradients(reference, shapes_batch())
    assert set(losses) == set(expected_losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    for name, value in expected_losses.items():
        assert float(value) > 0, name  # each loss has samples to work on
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert set(gradients) == set(expected_gradients)
    for name, grad in expected_gradients.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_batched_iou_is_torchvisions_to_the_bit():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 7, 2, generator=generator) * 50
    gt = torch.cat([corners, corners + 1 + torch.rand(2, 7, 2, generator=generator) * 30], dim=2)
    corners = torch.rand(40, 2, generator=generator) * 50
    candidates = torch.cat([corners, corners + 1 + torch.rand(40, 2, generator=generator) * 30], dim=1)
    iou = batched_box_iou(gt, candidates)
    for image in range(2):
        assert torch.equal(iou[image], box_iou(gt[image], candidates))


@pytest.mark.parametrize("max_iou_elements", [2**26, 3 * 60])  # all images together, or one at a time
def test_batched_matching_equals_the_per_image_matcher_with_padding_and_left_out_candidates(max_iou_elements,
                                                                                             monkeypatch):
    monkeypatch.setattr(matching, "MAX_IOU_ELEMENTS", max_iou_elements)
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(60, 2, generator=generator) * 60
    candidates = torch.cat([corners, corners + 4 + torch.rand(60, 2, generator=generator) * 30], dim=1)
    gts = [candidates[[3, 10, 11]] + 2.0, candidates[:0], candidates[[40]] - 3.0]
    crowd = candidates[[20]] + 1.0
    inside = torch.rand(3, 60, generator=generator) > 0.2
    matcher = Matcher(0.7, 0.3, allow_low_quality=True)
    width = 3
    padded = torch.zeros(3, width, 4)
    valid = torch.zeros(3, width, dtype=torch.bool)
    for row, gt in enumerate(gts):
        padded[row, : len(gt)], valid[row, : len(gt)] = gt, True
    crowd_padded = (torch.stack([crowd, crowd[:0].new_zeros(1, 4), crowd]), torch.tensor([[True], [False], [True]]))
    matched, labels = matcher.match_batch(candidates, padded, valid, crowd_padded, inside)
    for row, gt in enumerate(gts):
        expected_matched = torch.zeros(60, dtype=torch.int64)
        expected_labels = torch.full((60,), IGNORE, dtype=torch.int64)
        expected_matched[inside[row]], expected_labels[inside[row]] = reference_match(
            matcher, candidates[inside[row]], gt, crowd if row != 1 else None)
        assert torch.equal(labels[row], expected_labels)
        foreground = expected_labels == FOREGROUND
        assert torch.equal(matched[row][foreground], expected_matched[foreground])
    assert (labels == FOREGROUND).any() and (labels == BACKGROUND).any() and (labels[~inside] == IGNORE).all()


def test_sampling_counts_per_image_and_its_uniform_distribution():
    """Exact counts: min(positives, cap) positives and negatives for the rest of the budget, per
    image; and over many draws every positive is picked equally often (a uniform subset)."""
    labels = torch.full((3, 50), BACKGROUND)
    labels[0, :20] = FOREGROUND      # more positives than the cap of 8
    labels[1, :3] = FOREGROUND       # fewer
    labels[2, :45] = IGNORE          # fewer candidates than the budget: 5 negatives
    picks = torch.zeros(50)
    for seed in range(400):
        priorities = torch.rand(3, 50, generator=torch.Generator().manual_seed(seed))
        index, valid, positive = sample_balanced_batch(labels, 16, 0.5, priorities)
        counts = [(int(positive[r].sum()), int((valid[r] & ~positive[r]).sum())) for r in range(3)]
        assert counts == [(8, 8), (3, 13), (0, 5)]
        # The third image's 11 empty slots repeat its 5 samples in turn (not padding or ignored anchors).
        assert index[2].tolist() == (index[2][:5].tolist() * 4)[:16] and not valid[2][5:].any()
        assert (labels.gather(1, index)[positive] == FOREGROUND).all()
        assert (labels.gather(1, index)[valid & ~positive] == BACKGROUND).all()
        for row in range(3):
            assert index[row][valid[row]].unique().numel() == int(valid[row].sum())
            expected_pos, expected_neg = reference_sample(labels[row], 16, 0.5, priorities[row])
            assert index[row][positive[row]].tolist() == expected_pos.tolist()
            assert index[row][valid[row] & ~positive[row]].tolist() == expected_neg.tolist()
        picks.index_add_(0, index[0][positive[0]], torch.ones(8))
    # Each of the 20 positives is picked with probability 8/20: 160 times in 400 draws (sd ~10).
    assert (picks[:20] - 160).abs().max() < 45 and picks[20:].sum() == 0


@pytest.mark.parametrize("min_size", [0.0, 12.0])
def test_batched_proposals_equal_the_per_image_ones(min_size):
    """Three images of different sizes, 2 levels of 700 candidates (NMS over more than 1000 boxes per
    image: torchvision's level-by-level form on CPUs), boxes crossing the borders, small ones."""
    model = detector(**{"model.rpn.min_size": min_size, "model.rpn.post_nms_topk_train": 300})
    rpn = model.rpn
    generator = torch.Generator().manual_seed(4)
    image_sizes = [(200, 300), (150, 120), (180, 260)]
    anchors, logits, deltas = [], [], []
    for _ in range(2):
        corners = torch.rand(700, 2, generator=generator) * 320 - 20
        anchors.append(torch.cat([corners, corners + 2 + torch.rand(700, 2, generator=generator) * 80], dim=1))
        logits.append(torch.randn(3, 700, generator=generator))
        deltas.append(torch.randn(3, 700, 4, generator=generator) * 0.2)
    # In the first image, a box 11.5 px wide over one 12.5 px wide (IoU 0.92), scored above it: with
    # min_size 12 it must not suppress the larger one.
    anchors[0][:2] = torch.tensor([[10.0, 10.0, 21.5, 50.0], [10.0, 10.0, 22.5, 50.0]])
    logits[0][0, :2] = torch.tensor([10.0, 9.0])
    deltas[0][0, :2] = 0.0
    padded = rpn.propose(logits, deltas, anchors, image_sizes)
    assert padded.boxes.shape == (3, 300, 4) and padded.valid.shape == (3, 300)
    assert (padded.boxes[~padded.valid] == 0).all()
    proposals = padded.per_image()
    assert all(valid[: len(p)].all() for valid, p in zip(padded.valid, proposals))  # the real ones first
    assert (proposals[0] == anchors[0][1]).all(dim=1).any() == (min_size > 0)
    expected = per_image_proposals(rpn, logits, deltas, anchors, image_sizes)
    assert [len(p) for p in proposals] == [len(p) for p in expected]
    assert min(len(p) for p in expected) > 50 and max(len(p) for p in expected) == 300
    for got, want in zip(proposals, expected):
        assert torch.equal(got, want)


def test_each_nms_call_of_a_training_step_sees_one_image(monkeypatch):
    """NMS compares every pair of the boxes it is given (and torchvision's GPU kernel then walks them
    in one thread): one call over the batch costs about the batch size times the per-image calls
    (26.6 s against 2.7 s for 16 images of 512 px on 2 CPU cores). Each call must get the boxes of
    one image, its levels apart, and give each image the proposals it gets alone."""
    model = detector(**{"model.rpn.post_nms_topk_train": 100})
    generator = torch.Generator().manual_seed(9)
    corners = torch.rand(300, 2, generator=generator) * 150
    anchors = [torch.cat([corners, corners + 10 + torch.rand(300, 2, generator=generator) * 40], dim=1)] * 2
    logits = [torch.randn(3, 300, generator=generator) for _ in range(2)]
    deltas = [torch.randn(3, 300, 4, generator=generator) * 0.1 for _ in range(2)]
    sizes = [(160, 170), (120, 200), (150, 150)]
    calls = []

    def recording_nms(boxes, scores, threshold):
        calls.append(len(boxes))
        return torchvision_nms(boxes, scores, threshold)

    monkeypatch.setattr(rpn_module, "nms", recording_nms)
    padded = model.rpn.propose(logits, deltas, anchors, sizes)
    assert calls == [600, 600, 600]  # 2 levels of 300 candidates, per image
    assert len(padded.per_image()) == 3 and all(len(p) > 20 for p in padded.per_image())
    for image, (got, size) in enumerate(zip(padded.per_image(), sizes)):
        alone = model.rpn.propose([lg[image:image + 1] for lg in logits], [dt[image:image + 1] for dt in deltas],
                                  anchors, [size]).per_image()[0]
        assert torch.equal(got, alone)


def test_an_image_left_without_proposals_samples_its_gt_boxes_alone():
    """The first image's deltas shrink every box below min_size: its row of the padded proposals is all
    padding (zeros, masked), and the RoI head samples from its GT box alone; the second image, without
    GT boxes, samples negatives only. The regression targets stay finite."""
    model = detector(**{"model.rpn.min_size": 30.0, "model.rpn.post_nms_topk_train": 50})
    generator = torch.Generator().manual_seed(8)
    corners = torch.rand(200, 2, generator=generator) * 100
    anchors = [torch.cat([corners, corners + 40], dim=1)]
    logits = [torch.randn(2, 200, generator=generator)]
    deltas = torch.zeros(2, 200, 4)
    deltas[0, :, 2:] = math.log(0.2)  # 40 px -> 8 px wide and high
    padded = model.rpn.propose(logits, [deltas], anchors, [(150, 150), (150, 150)])
    assert padded.boxes.shape == (2, 50, 4)
    assert not padded.valid[0].any() and (padded.boxes[0] == 0).all() and padded.valid[1].any()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    boxes, labels, regression, valid = model.roi_heads.sample_proposals(padded, targets)
    valid, labels = valid.view(2, -1), labels.view(2, -1)
    assert int(valid[0].sum()) == 1 and labels[0][valid[0]].tolist() == [2]
    assert torch.equal(boxes[0][0], targets[0]["boxes"][0])
    assert valid[1].any() and (labels[1][valid[1]] == 0).all()
    assert torch.isfinite(regression).all()


def test_tied_scores_give_an_image_the_same_proposals_whatever_the_rest_of_the_batch():
    """All logits equal: every score ties, and which overlapping box survives NMS is decided by the
    position of each box in its image alone, not by the other images of the batch."""
    rpn = detector(**{"model.rpn.post_nms_topk_train": 1000}).rpn
    generator = torch.Generator().manual_seed(6)
    corners = torch.rand(400, 2, generator=generator) * 100
    anchors = [torch.cat([corners, corners + 20 + torch.rand(400, 2, generator=generator) * 10], dim=1)]
    deltas = [torch.randn(3, 400, 4, generator=generator) * 0.05]
    logits = [torch.zeros(3, 400)]
    sizes = [(150, 150)] * 3
    together = rpn.propose(logits, deltas, anchors, sizes).per_image()
    alone = rpn.propose([logits[0][1:2]], [deltas[0][1:2]], anchors, sizes[1:2]).per_image()
    assert torch.equal(together[1], alone[0])
    assert 5 < len(alone[0]) < 400  # NMS removed overlapping boxes among the ties


@pytest.mark.parametrize("overrides", [{}, {"model.roi_head.global_context": True}])
def test_a_training_step_runs_no_operator_that_reads_the_device(overrides):
    """No ``item`` (``_local_scalar_dense``) or ``nonzero`` in a training step's forward and backward,
    with and without the global context: on a GPU each would stall the host until the device caught
    up. (The RPN's NMS per image, whose output size is data, is no such operator on a CPU: rpn.py lists it.)"""
    model = detector(**overrides)
    losses_and_gradients(model, shapes_batch())  # one-off work first
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        losses_and_gradients(model, shapes_batch())
    names = [event.name for event in profile.events()]
    assert "aten::convolution_backward" in names and "aten::nonzero" not in names
    assert "aten::_local_scalar_dense" not in names and "aten::item" not in names


def test_rpn_losses_and_the_whole_roi_head_trace_as_whole_graphs(monkeypatch):
    """No host sync and no shape read from the data in the RPN's label assignment, sampling and
    losses, nor anywhere in the RoI head's training forward on the RPN's padded proposals (sampling,
    the FPN pooler's one-table gather, the box head, the losses): torch.compile with fullgraph=True
    traces each as one graph (a ``.item()``, a ``nonzero`` or a boolean-mask index would break it),
    as CUDA-graph capture needs, and the traced code gives the same losses. Left out: the per-image
    generators' draws (here plain torch.rand draws from the seeded global stream, on both sides)."""
    def unseeded_priorities(num_images, count, generators, device):
        return torch.rand(num_images, count, device=device)

    monkeypatch.setattr(rpn_module, "random_priorities", unseeded_priorities)
    monkeypatch.setattr(roi_heads_module, "random_priorities", unseeded_priorities)
    model = detector()
    torch.manual_seed(0)
    expected, _ = losses_and_gradients(model, shapes_batch())
    for module, name in ((model.rpn, "losses"), (model.roi_heads, "forward")):
        setattr(module, name, torch.compile(getattr(module, name), fullgraph=True, backend="eager"))
    torch.manual_seed(0)
    losses, _ = losses_and_gradients(model, shapes_batch())
    assert all(float(value) > 0 for value in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-6, atol=0, msg=name)
