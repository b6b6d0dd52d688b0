"""The whole detector against torchvision's FasterRCNN assembled from the same parts (one shared
backbone, heads with the same weights): normalization and padding, training losses, detections in
the input's pixels; BGR input, channels_last, per-image sampling seeds and crowd regions."""

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from detection.modeling.anchors import AnchorGenerator
from detection.modeling.box_heads import BoxPredictor, FCHead
from detection.modeling.faster_rcnn import FasterRCNN
from detection.modeling.matching import Matcher
from detection.modeling.poolers import PyramidPooler
from detection.modeling.roi_heads import RoIHeads
from detection.modeling.rpn import RegionProposalNetwork, RPNHead

# 0-255; 77.7 / 255 and 57.12 / 255 round differently in float32 than in float64 then float32
MEAN, STD = [123.675, 116.28, 77.7], [58.395, 57.12, 57.375]
CHANNELS, RESOLUTION, FC_DIM, NUM_CLASSES = 8, 5, 16, 3
SIZES, RATIOS = ((16, 32), (32, 64)), (0.5, 1.0, 2.0)
# Shorter sides at torchvision's min_size, so that its resize is the identity; padded to 96 x 96.
IMAGE_SIZES = [(64, 96), (72, 64)]
EVERYTHING = 10**6  # sampling budgets above the anchor and proposal counts


class TinyBackbone(nn.Module):
    """Two maps at strides 4 and 8, as an FPN gives them."""

    out_channels = CHANNELS

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, CHANNELS, 5, stride=4, padding=2)
        self.down = nn.Conv2d(CHANNELS, CHANNELS, 3, stride=2, padding=1)

    def forward(self, x):
        p2 = torch.relu(self.stem(x))
        return OrderedDict(p2=p2, p3=self.down(p2))


def build_pair(batch_size=EVERYTHING, input_format="RGB"):
    """Our detector and torchvision's, sharing the backbone, with copies of the same head weights."""
    torch.manual_seed(0)
    backbone = TinyBackbone()
    num_anchors = len(RATIOS) * len(SIZES[0])
    rpn_head = RPNHead(CHANNELS, num_anchors, 0)
    box_head = FCHead(CHANNELS, RESOLUTION, 2, FC_DIM)
    predictor = BoxPredictor(FC_DIM, NUM_CLASSES)
    with torch.no_grad():  # scores spread out rather than tied
        for layer in (rpn_head.conv, rpn_head.cls_logits, rpn_head.bbox_pred, predictor.cls_score):
            layer.weight.normal_(std=0.3)
    rpn = RegionProposalNetwork(["p2", "p3"], rpn_head, AnchorGenerator(SIZES, RATIOS), Matcher(0.7, 0.3, True),
                                batch_size_per_image=batch_size, positive_fraction=0.5, pre_nms_topk=(60, 50),
                                post_nms_topk=(40, 30), nms_thresh=0.7, min_size=0.0, smooth_l1_beta=1 / 9,
                                loss_weight=1.0, boundary_thresh=-1.0)
    roi_heads = RoIHeads(PyramidPooler(["p2", "p3"], [4, 8], RESOLUTION, 2, "auto"), box_head, predictor,
                         Matcher(0.5, 0.5, False), batch_size_per_image=batch_size, positive_fraction=0.25,
                         bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), smooth_l1_beta=1 / 9, score_thresh=0.05,
                         nms_thresh=0.5, detections_per_img=20, global_context=False)
    ours = FasterRCNN(backbone, rpn, roi_heads, MEAN, STD, 32, input_format)

    reference_rpn_head = TorchvisionRPNHead(CHANNELS, num_anchors)
    reference_rpn_head.load_state_dict({k.replace("conv.", "conv.0.0.") if k.startswith("conv.") else k: v
                                        for k, v in rpn_head.state_dict().items()})
    reference_box_head = TwoMLPHead(CHANNELS * RESOLUTION**2, FC_DIM)
    reference_box_head.load_state_dict(box_head.state_dict())
    reference_predictor = FastRCNNPredictor(FC_DIM, NUM_CLASSES + 1)
    reference_predictor.load_state_dict(predictor.state_dict())
    reference = TorchvisionFasterRCNN(
        backbone, min_size=64, max_size=1000, image_mean=[m / 255 for m in MEAN], image_std=[s / 255 for s in STD],
        rpn_anchor_generator=TorchvisionAnchors(SIZES, (RATIOS,) * 2), rpn_head=reference_rpn_head,
        rpn_pre_nms_top_n_train=60, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_train=40,
        rpn_post_nms_top_n_test=30, rpn_batch_size_per_image=batch_size,
        box_roi_pool=MultiScaleRoIAlign(["p2", "p3"], RESOLUTION, 2), box_head=reference_box_head,
        box_predictor=reference_predictor, box_detections_per_img=20, box_batch_size_per_image=batch_size)
    return ours, reference


def images(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in IMAGE_SIZES]


def boxes_and_labels():
    return [(torch.tensor([[10.0, 8.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]), torch.tensor([1, 3])),
            (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))]  # the second image holds no object


def test_preprocess_equals_torchvision_normalization_and_padding():
    ours, reference = build_pair()
    batch, sizes = ours.preprocess(images())
    expected = reference.transform([image.float() / 255 for image in images()])[0]
    assert sizes == expected.image_sizes == IMAGE_SIZES
    assert batch.shape == (2, 3, 96, 96)
    assert torch.equal(batch, expected.tensors)
    # The padding (bottom and right) is zeros after normalization.
    assert not batch[0, :, 64:].any() and not batch[1, :, 72:].any() and not batch[1, :, :, 64:].any()
    assert batch[1, :, 71, 63].abs().sum() > 0


def test_bgr_input_is_flipped_to_the_models_rgb():
    rgb, _ = build_pair()
    bgr, _ = build_pair(input_format="BGR")
    pictures = images()
    assert torch.equal(bgr.preprocess(pictures)[0], rgb.preprocess([p.flip(0) for p in pictures])[0])
    assert not torch.equal(bgr.preprocess(pictures)[0], rgb.preprocess(pictures)[0])


def test_channels_last_changes_the_layout_not_the_values():
    model, _ = build_pair()
    plain, _ = model.preprocess(images())
    model.channels_last = True
    batch, _ = model.preprocess(images())
    assert batch.is_contiguous(memory_format=torch.channels_last) and not plain.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(batch, plain)


def test_detections_equal_torchvision():
    ours, reference = build_pair()
    ours.eval()
    reference.eval()
    with torch.no_grad():
        detections = ours([{"image": image} for image in images()])
        expected = reference([image.float() / 255 for image in images()])
    for mine, theirs in zip(detections, expected):
        assert len(theirs["boxes"]) == 20
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-4)


def test_training_losses_equal_torchvision_with_an_image_without_objects():
    ours, reference = build_pair()
    ours.train()
    reference.train()
    samples = [{"image": image, "boxes": boxes, "labels": labels}
               for image, (boxes, labels) in zip(images(), boxes_and_labels())]
    losses = ours(samples)
    expected = reference([image.float() / 255 for image in images()],
                         [{"boxes": boxes, "labels": labels} for boxes, labels in boxes_and_labels()])
    names = {"loss_rpn_cls": "loss_objectness", "loss_rpn_box": "loss_rpn_box_reg", "loss_cls": "loss_classifier",
             "loss_box": "loss_box_reg"}
    assert set(losses) == set(names)
    for ours_name, their_name in names.items():
        torch.testing.assert_close(losses[ours_name], expected[their_name], rtol=1e-5, atol=0)
        assert losses[ours_name] > 1e-3, ours_name  # not two zeros compared


@pytest.mark.parametrize("original", [(128, 192), (32, 40)])
def test_boxes_return_in_the_original_pixels(original):
    """An image resized for the network carries its original "height" and "width": its boxes are
    scaled back as torchvision's resize_boxes scales them."""
    model, _ = build_pair()
    model.eval()
    image = images()[1]
    with torch.no_grad():
        at_input = model([{"image": image}])[0]
        restored = model([{"image": image, "height": original[0], "width": original[1]}])[0]
    assert len(at_input["boxes"]) > 5
    torch.testing.assert_close(restored["boxes"], resize_boxes(at_input["boxes"], list(IMAGE_SIZES[1]),
                                                               list(original)))
    assert torch.equal(restored["scores"], at_input["scores"]) and torch.equal(restored["labels"], at_input["labels"])


def sampled_losses(model, seed):
    samples = [{"image": image, "boxes": boxes, "labels": labels, "seed": seed + index}
               for index, (image, (boxes, labels)) in enumerate(zip(images(), boxes_and_labels()))]
    return {name: float(value.detach()) for name, value in model(samples).items()}


def test_a_per_image_seed_makes_the_sampling_independent_of_the_global_generator():
    model, _ = build_pair(batch_size=16)
    model.train()
    torch.manual_seed(1)
    first = sampled_losses(model, seed=7)
    torch.manual_seed(2)
    assert sampled_losses(model, seed=7) == first
    other = sampled_losses(model, seed=8)
    assert abs(other["loss_rpn_cls"] - first["loss_rpn_cls"]) > 1e-4 and abs(other["loss_cls"] - first["loss_cls"]) > 1e-4


def test_crowd_boxes_reach_the_matchers():
    """A crowd region over part of an image without objects: the anchors mostly inside it leave the
    objectness loss, which is then the RPN's own loss for that target (run here on the same features)."""
    model, _ = build_pair()
    model.train()
    image = images()[0]
    crowd = torch.tensor([[0.0, 0.0, 48.0, 40.0]])
    sample = {"image": image, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    plain = model([sample])
    with_crowd = model([{**sample, "crowd_boxes": crowd}])
    assert abs(float(plain["loss_rpn_cls"].detach() - with_crowd["loss_rpn_cls"].detach())) > 1e-4
    batch, sizes = model.preprocess([image])
    _, direct = model.rpn(batch.shape[-2:], model.backbone(batch), sizes,
                          [{"boxes": torch.zeros(0, 4), "crowd_boxes": crowd}])
    torch.testing.assert_close(with_crowd["loss_rpn_cls"], direct["loss_rpn_cls"])
