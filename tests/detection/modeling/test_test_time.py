"""Box refinement, box voting, multi-scale testing and global context (the paper's Appendix B)."""

import dataclasses
import os

import pytest
import torch

from detection.config import load_detection_config
from detection.modeling.build import build_model, build_test_model
from detection.modeling.test_time import (
    TestTimeDetector,
    TestTimeOptions,
    box_voting,
    choose_scale_pairs,
)
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import randomize_bn_statistics

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")
SMALL = ["model.backbone.base_width=16", "model.fpn.out_channels=32", "model.roi_head.fc_dim=64",
         "input.min_size_test=128", "input.max_size_test=256", "model.rpn.post_nms_topk_test=50",
         "test.score_thresh=0.0"]


def make_options(**changes) -> TestTimeOptions:
    """The test options of the config defaults, with ``changes``."""
    defaults = load_detection_config(None)
    return dataclasses.replace(TestTimeOptions.from_config(defaults.test, defaults.input), **changes)


def small_model(extra=()):
    torch.manual_seed(0)
    cfg = load_detection_config(SHAPES_CFG, SMALL + list(extra))
    model = randomize_bn_statistics(build_model(cfg, num_classes=3, backbone_weights=False)).eval()
    return cfg, model


def test_box_voting_hand_computed():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    candidates = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # the survivor itself, score 0.9
        [1.0, 1.0, 11.0, 11.0],   # IoU 81/119 = 0.68: votes, score 0.3
        [0.0, 0.0, 10.0, 10.0],   # same box but another class: no vote
        [6.0, 6.0, 16.0, 16.0],   # IoU 16/184: too far
    ])
    scores = torch.tensor([0.9, 0.3, 0.99, 0.8])
    labels = torch.tensor([1, 1, 2, 1])
    voted = box_voting(kept, torch.tensor([1]), candidates, scores, labels, iou_thresh=0.5)
    expected = (0.9 * candidates[0] + 0.3 * candidates[1]) / 1.2  # [0.25, 0.25, 10.25, 10.25]
    assert torch.allclose(voted, expected[None]) and torch.allclose(voted, torch.tensor([[0.25, 0.25, 10.25, 10.25]]))
    # A stricter threshold leaves the survivor alone.
    assert torch.equal(box_voting(kept, torch.tensor([1]), candidates, scores, labels, iou_thresh=0.7), kept)


def test_scale_pair_rule():
    factors = torch.tensor([0.5, 1.0, 2.0])
    areas = torch.tensor([224.0**2, 448.0**2, 1000.0**2, 10.0**2, 150.0**2])
    pairs = choose_scale_pairs(areas, factors, 224).tolist()
    assert pairs[0] == [1, 2]   # exactly 224 at factor 1; not too big, so the next larger scale
    assert pairs[1] == [0, 1]   # 224 at factor 0.5
    assert pairs[2] == [0, 1]   # too big everywhere: the two smallest scales
    assert pairs[3] == [2, 1]   # too small everywhere: the two largest scales
    assert pairs[4] == [1, 2]   # 150 (at 1.0) is closest; 224 lies towards the larger scale


def image_sample(height=128, width=160, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)
    return {"image": image, "height": height, "width": width}


def test_everything_off_equals_single_scale_inference():
    _, model = small_model()
    sample = image_sample()  # 128 x 160 needs no resize at min_size_test=128
    baseline = model([sample])[0]
    wrapped = TestTimeDetector(model, make_options(base_scale=128, max_size=256, score_thresh=0.0))([sample])[0]
    assert len(baseline["boxes"]) > 10
    assert torch.allclose(wrapped["boxes"], baseline["boxes"], atol=1e-3)
    assert torch.equal(wrapped["labels"], baseline["labels"])
    assert torch.allclose(wrapped["scores"], baseline["scores"], atol=1e-5)


def test_an_image_resized_on_disk_gets_boxes_in_the_annotations_frame():
    """The json annotates 256 x 320 pixels and the file holds 128 x 160: the test-time passes run on the
    file's pixels and the boxes come back in the json's (it raised, naming a resize the dataset never made)."""
    _, model = small_model()
    options = make_options(base_scale=128, max_size=256, score_thresh=0.0, flip=True)
    sample = image_sample()
    own = TestTimeDetector(model, options)([sample])[0]
    annotated = TestTimeDetector(model, options)([{**sample, "height": 256, "width": 320}])[0]
    assert len(own["boxes"]) > 10
    torch.testing.assert_close(annotated["boxes"], own["boxes"] * 2)
    assert torch.equal(annotated["labels"], own["labels"]) and torch.equal(annotated["scores"], own["scores"])


def test_union_mode_with_one_scale_is_a_plain_detection_at_that_scale():
    """A scale sweep in union mode: the one-scale entry took its proposals at input.min_size_test (128 here)
    and scored them at its own scale (160), unlike a detection at 160."""
    _, model = small_model()
    sample = image_sample()
    union = TestTimeDetector(model, make_options(base_scale=128, max_size=512, score_thresh=0.0, scales=(160,),
                                                 multiscale_mode="union"))([sample])[0]
    at_160 = TestTimeDetector(model, make_options(base_scale=160, max_size=512, score_thresh=0.0))([sample])[0]
    assert len(at_160["boxes"]) > 10
    torch.testing.assert_close(union["boxes"], at_160["boxes"])
    assert torch.equal(union["labels"], at_160["labels"])


def test_refinement_repools_the_top_class_box_and_keeps_the_union():
    _, model = small_model()
    tester = TestTimeDetector(model, make_options(base_scale=128, max_size=256, box_refinement=True))
    sample = image_sample()
    level = tester.level(sample["image"], 128)
    proposals = tester.proposals(level)
    scores, boxes = tester.score_boxes([level], proposals, (128, 160))
    first_scores, first_boxes = tester.head([level], proposals, (128, 160))
    top = first_scores[:, 1:].argmax(1) + 1
    second_scores, second_boxes = tester.head([level], first_boxes[torch.arange(len(top)), top], (128, 160))
    assert len(scores) == 2 * len(proposals)
    assert torch.allclose(scores, torch.cat([first_scores, second_scores]))
    assert torch.allclose(boxes, torch.cat([first_boxes, second_boxes]))
    # The refined predictions differ from the originals: the switch changes the detections.
    assert not torch.allclose(second_boxes, first_boxes)


def test_multiscale_merges_the_two_chosen_scales_by_max():
    _, model = small_model()
    options = make_options(base_scale=128, max_size=256, scales=(64, 128, 256))
    tester = TestTimeDetector(model, options)
    image = image_sample()["image"]
    pyramid = [tester.level(image, s) for s in options.pyramid]
    rois = torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 160.0, 128.0], [40.0, 20.0, 120.0, 100.0]])
    captured = {}
    predictor = model.roi_heads.predictor
    try:
        model.roi_heads.predictor = _Capture(predictor, captured)
        tester.head(pyramid, rois, (128, 160))
    finally:
        model.roi_heads.predictor = predictor
    pairs = choose_scale_pairs((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]),
                               torch.tensor([lv.factor for lv in pyramid]), options.canonical_size)
    per_scale = [model.roi_heads.region_features(lv.features, [lv.to_network(rois)], [lv.size]) for lv in pyramid]
    expected = torch.stack([torch.maximum(per_scale[a][i], per_scale[b][i]) for i, (a, b) in enumerate(pairs.tolist())])
    assert torch.allclose(captured["features"], expected, atol=1e-6)
    assert len({tuple(p) for p in pairs.tolist()}) > 1  # the RoIs really use different scales


class _Capture(torch.nn.Module):
    def __init__(self, inner, store):
        super().__init__()
        self.inner, self.store = inner, store

    def forward(self, features):
        self.store["features"] = features
        return self.inner(features)


def test_multiscale_modes_run_through_the_config():
    """The test keys reach the options (compared with the defaults' options changed by hand) of a
    detector wrapping the model, whose detections lie in the image; the two modes differ."""
    switches = ["test.scales=[96,128,192]", "test.flip=true", "test.box_voting=true", "test.box_refinement=true"]
    defaults = TestTimeOptions.from_config(small_model()[0].test, small_model()[0].input)
    sample = image_sample(100, 140)
    found = {}
    for mode in ("paper", "union"):
        cfg, model = small_model(switches + [f"test.multiscale_mode={mode}"])
        tester = build_test_model(model, cfg)
        assert isinstance(tester, TestTimeDetector)
        by_hand = dataclasses.replace(defaults, scales=(96, 128, 192), multiscale_mode=mode, flip=True,
                                      box_voting=True, box_refinement=True)
        assert tester.options == by_hand and tester.model is model
        found[mode] = tester([sample])[0]
        boxes = found[mode]["boxes"]
        assert 0 < len(boxes) <= cfg.test.detections_per_img
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 140).all() and (boxes[:, 3] <= 100).all()
    assert not torch.equal(found["paper"]["scores"][:10], found["union"]["scores"][:10])


@pytest.mark.parametrize("switches", [["test.scales=[96,128,192]"], ["test.scales=[96,128,192]", "test.flip=true",
                                                                      "test.box_refinement=true", "test.box_voting=true"]])
def test_an_image_without_proposals_has_no_detections_at_every_setting(switches):
    """Every proposal under model.rpn.min_size (a thin banner under the paper's 16 pixels): the
    multi-scale head pooled no region at any scale and called the classifier on nothing (a TypeError),
    where single-scale inference returns no detection."""
    cfg, model = small_model(["model.rpn.min_size=1000", *switches])
    sample = image_sample(100, 140)
    assert len(model.rpn(*proposal_inputs(model, sample))[0][0]) == 0
    detections = build_test_model(model, cfg)([sample])[0]
    assert detections["boxes"].shape == (0, 4) and len(detections["scores"]) == len(detections["labels"]) == 0


def proposal_inputs(model, sample):
    batch, sizes = model.preprocess([sample["image"]])
    return tuple(batch.shape[-2:]), model.backbone(batch), sizes


def test_context_branch_gets_gradient():
    cfg, model = small_model(["model.roi_head.global_context=true"])
    model.train()
    outputs = []
    model.roi_heads.box_head = _Record(model.roi_heads.box_head, outputs)
    sample = image_sample()
    sample.update(boxes=torch.tensor([[20.0, 20.0, 60.0, 70.0]]), labels=torch.tensor([2]))
    losses = model([sample])
    sum(losses.values()).backward()
    regions, context = outputs  # region_features runs the head on the RoIs, then on the whole image
    assert context.shape[0] == 1 and regions.shape[0] > 1
    assert context.grad is not None and context.grad.abs().sum() > 0
    weight = model.roi_heads.predictor.cls_score.weight
    assert weight.grad[:, weight.shape[1] // 2:].abs().sum() > 0  # the context half of the classifier learns


class _Record(torch.nn.Module):
    def __init__(self, inner, store):
        super().__init__()
        self.inner, self.store = inner, store

    def forward(self, pooled):
        out = self.inner(pooled)
        out.retain_grad()
        self.store.append(out)
        return out


@pytest.mark.parametrize("override, message", [
    ("test.scales=[]", "test.scales=[]"),
    ("test.scales=[0,600]", "positive"),
])
def test_bad_scales_are_one_clear_message(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_detection_config(SHAPES_CFG, [override])


def test_context_weights_without_context_are_named(tmp_path):
    from detection.weights import check_weights_fit

    _, with_context = small_model(["model.roi_head.global_context=true"])
    _, without = small_model()
    with pytest.raises(UserError, match="global_context"):
        check_weights_fit(without, with_context.state_dict(), "ctx.pth")


def test_box_voting_moves_noisy_detections_towards_the_object():
    """Crafted case: detections scattered around one object with scores unrelated to their error.
    The survivor of NMS is then as wrong as any one of them; the vote averages the errors out."""
    from torchvision.ops import box_iou

    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[50.0, 50.0, 150.0, 150.0]])
    kept_iou, voted_iou = [], []
    for _ in range(50):
        candidates = truth + torch.randn(30, 4, generator=generator) * 8
        scores = torch.rand(30, generator=generator) * 0.5 + 0.5
        labels = torch.ones(30, dtype=torch.int64)
        survivor = candidates[scores.argmax()][None]
        voted = box_voting(survivor, torch.tensor([1]), candidates, scores, labels, iou_thresh=0.5)
        kept_iou.append(float(box_iou(survivor, truth)))
        voted_iou.append(float(box_iou(voted, truth)))
    kept_mean, voted_mean = sum(kept_iou) / 50, sum(voted_iou) / 50
    assert voted_mean > kept_mean + 0.05, (kept_mean, voted_mean)
    assert sum(v > k for v, k in zip(voted_iou, kept_iou)) >= 40


class _HalfwayHead(TestTimeDetector):
    """A stand-in head whose regression moves every RoI halfway to the one object and whose class-1
    score is the RoI's IoU with it: the situation box refinement is made for."""

    truth = torch.tensor([[40.0, 30.0, 120.0, 110.0]])

    def head(self, pyramid, rois, image_size):
        from torchvision.ops import box_iou

        iou = box_iou(rois, self.truth)[:, 0]
        scores = torch.stack([1 - iou, iou], dim=1)
        moved = rois + (self.truth - rois) / 2
        return scores, torch.stack([rois, moved], dim=1)


def test_box_refinement_moves_detections_towards_the_object():
    from torchvision.ops import box_iou

    proposals = _HalfwayHead.truth + torch.tensor([[-30.0, 20.0, -25.0, 15.0], [20.0, -20.0, 30.0, -10.0],
                                                   [-15.0, -25.0, 10.0, -20.0]])
    best_iou = {}
    for refine in (False, True):
        options = make_options(base_scale=128, max_size=256, box_refinement=refine, score_thresh=0.0)
        tester = _HalfwayHead(torch.nn.Identity(), options)
        scores, boxes = tester.score_boxes([], proposals, (160, 200))
        assert len(scores) == (2 if refine else 1) * len(proposals)  # the union keeps the originals
        detections = tester.final_detections(scores, boxes)
        best_iou[refine] = float(box_iou(detections["boxes"][:1], _HalfwayHead.truth))
    assert best_iou[True] > best_iou[False] + 0.1, best_iou
