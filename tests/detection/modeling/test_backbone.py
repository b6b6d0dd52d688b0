"""model.backbone.timm_name: timm ResNet-family models as detection backbones (random weights, CPU)."""

import math
import os

import pytest
import timm
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbones import BackboneError, WeightsError
from detection.config import load_detection_config
from detection.modeling.backbone import TimmFeatures, build_timm_features
from detection.modeling.build import build_model
from tests.conftest import ROOT
from tests.helpers import randomize_bn_statistics

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")
NAME = "resnet18d"  # deep stem and average-pool shortcuts: differs from our own ResNet-18
SMALL = ["model.fpn.out_channels=32", "model.roi_head.fc_dim=64", "model.roi_head.batch_size_per_image=32",
         "model.rpn.batch_size_per_image=64", "model.rpn.post_nms_topk_test=50", "test.score_thresh=0.0"]
# The C4 design on the same data: one anchor level at stride 16, 14x14 pooling halved by res5.
C4 = ["model.arch=c4", "model.anchors.sizes=[[32,64,128]]", "model.roi_head.pooler_resolution=14"]


def detection_cfg(*overrides, name=NAME):
    return load_detection_config(SHAPES_CFG, [f"model.backbone.timm_name={name}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """A timm state dict on disk, with non-trivial BatchNorm statistics, and the tensors it holds."""
    torch.manual_seed(0)
    model = randomize_bn_statistics(timm.create_model(NAME, pretrained=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("timm") / f"{NAME}.pth"
    torch.save(state, path)
    return str(path), state


def timm_features_reference(state):
    """timm's own features_only network holding the same weights (it has no classifier)."""
    reference = timm.create_model(NAME, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    return reference.eval()


def images(batch=2):
    return torch.randn(batch, 3, 160, 224, generator=torch.Generator().manual_seed(1))


def training_batch():
    generator = torch.Generator().manual_seed(2)
    boxes = torch.tensor([[20.0, 30.0, 90.0, 110.0], [100.0, 40.0, 200.0, 150.0]])
    return [{"image": torch.randint(0, 256, (3, 160, 224), generator=generator, dtype=torch.uint8),
             "boxes": boxes, "labels": torch.tensor([1, 3])} for _ in range(2)]


def train_and_infer(model):
    """One training step's losses (backpropagated) and the detections of eval mode."""
    model.train()
    losses = model(training_batch())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections = model(training_batch())
    return losses, detections


def assert_untrained_losses(losses):
    """A detector's losses before training: the objectness and class logits start near 0 (weights of
    std 0.01), so the objectness loss is about ln 2 and the classification loss about ln 4 (3 classes
    and background), as means over the sampled anchors and RoIs; the box losses are positive."""
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    losses = {name: float(value.detach()) for name, value in losses.items()}
    assert losses["loss_rpn_cls"] == pytest.approx(math.log(2), abs=0.06)
    assert losses["loss_cls"] == pytest.approx(math.log(4), abs=0.06)
    assert all(0 < losses[name] < 10 for name in ("loss_rpn_box", "loss_box"))


def assert_detections_inside(detections, size):
    height, width = size
    assert len(detections) == 2
    for found in detections:
        boxes = found["boxes"]
        assert len(boxes) > 0 and set(found["labels"].tolist()) <= {1, 2, 3}
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all() and ((found["scores"] > 0) & (found["scores"] <= 1)).all()


# -- (a) features equal timm's own, (b) weights load from a file -----------------------------------
def test_features_equal_timm_features_only_exactly(saved_weights):
    path, state = saved_weights
    cfg = detection_cfg(f"model.backbone.weights={path}", "model.backbone.norm=bn", "model.backbone.freeze_at=0")
    ours = build_timm_features(cfg.model.backbone, ["res2", "res3", "res4", "res5"]).eval()
    reference = timm_features_reference(state)
    x = images()
    with torch.no_grad():
        got, expected = ours(x), reference(x)
    assert list(got) == ["res2", "res3", "res4", "res5"]
    for name, tensor in zip(got, expected):
        assert torch.equal(got[name], tensor), name
    # Widths and strides come from timm's feature_info.
    assert ours.out_channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    assert ours.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_frozen_bn_and_freeze_at_keep_the_numbers_and_stop_gradients(saved_weights):
    path, state = saved_weights
    cfg = detection_cfg(f"model.backbone.weights={path}", "model.backbone.norm=frozen_bn",
                        "model.backbone.freeze_at=2")
    ours = build_timm_features(cfg.model.backbone, ["res3", "res4", "res5"])
    net = ours.net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    for part in ("conv1", "bn1", "layer1"):
        assert not any(p.requires_grad for p in getattr(net, part).parameters()), part
    assert all(p.requires_grad for p in net.layer2.parameters())
    # Frozen BN in train mode computes what BN computes in eval mode.
    reference = timm_features_reference(state)
    x = images(1)
    with torch.no_grad():
        got, expected = ours.train()(x), reference(x)
    for name, tensor in zip(got, expected[1:]):
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-4)


def test_weights_file_loads_every_tensor(saved_weights):
    path, state = saved_weights
    cfg = detection_cfg(f"model.backbone.weights={path}")  # shapes.yaml: norm=bn, freeze_at=0
    loaded = build_model(cfg, num_classes=3).backbone.body.net.state_dict()
    compared = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(compared) > 100
    for key in compared:
        assert torch.equal(loaded[key], state[key]), key


# -- (c) a detector trains and detects ----------------------------------------------------------------
def test_fpn_detector_with_timm_backbone_trains_and_detects():
    torch.manual_seed(0)
    model = build_model(detection_cfg(), num_classes=3)
    assert isinstance(model.backbone.body, TimmFeatures)
    losses, detections = train_and_infer(model)
    assert_untrained_losses(losses)
    assert model.backbone.body.net.conv1[0].weight.grad.abs().sum() > 0  # the loss reaches timm's stem
    assert_detections_inside(detections, (160, 224))


# -- (d) the C4 design ----------------------------------------------------------------------------------
def test_c4_trunk_and_res5_equal_timm_forward_features(saved_weights):
    path, state = saved_weights
    cfg = detection_cfg(*C4, f"model.backbone.weights={path}", "model.backbone.norm=bn",
                        "model.backbone.freeze_at=0")
    model = build_model(cfg, num_classes=3).eval()
    reference = timm.create_model(NAME, pretrained=False)
    reference.load_state_dict(state)
    x = images(1)
    with torch.no_grad():
        res4 = model.backbone(x)["res4"]
        assert torch.equal(model.roi_heads.box_head.res5(res4), reference.eval().forward_features(x))
    assert model.backbone.out_strides == {"res4": 16}


def test_c4_detector_with_timm_backbone_trains_and_detects(saved_weights):
    # Weights with non-zero BatchNorm scales: timm initializes each block's last one to 0, which
    # frozen BN would keep, and no gradient would then reach the convolutions of the blocks.
    path, _ = saved_weights
    torch.manual_seed(0)
    model = build_model(detection_cfg(*C4, f"model.backbone.weights={path}", "model.backbone.norm=frozen_bn",
                                      "model.backbone.freeze_at=2"), num_classes=3)
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    losses, detections = train_and_infer(model)
    assert_untrained_losses(losses)
    assert model.roi_heads.box_head.res5[0].conv1.weight.grad.abs().sum() > 0
    assert model.backbone.body.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert_detections_inside(detections, (160, 224))


def test_c4_with_a_model_without_layer4_is_one_clear_line():
    with pytest.raises(BackboneError) as error:
        build_model(detection_cfg(*C4, name="regnetx_002"), num_classes=3)
    message = str(error.value)
    assert "\n" not in message and "layer1..layer4" in message and "model.arch=fpn" in message


# -- (e) user errors -------------------------------------------------------------------------------------
def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(BackboneError) as error:
        build_model(detection_cfg(name="resnet18dd"), num_classes=3)
    message = str(error.value)
    assert "\n" not in message and "'resnet18dd'" in message and "resnet18d" in message.split("mean", 1)[1]


def test_weights_of_another_model_name_the_file_and_the_keys(saved_weights):
    path, _ = saved_weights
    # resnet18's single 7x7 stem conv is conv1.weight; resnet18d's deep stem is conv1.0/.3/.6.
    with pytest.raises(WeightsError) as error:
        build_model(detection_cfg(f"model.backbone.weights={path}", name="resnet18"), num_classes=3)
    message = str(error.value)
    assert "\n" not in message and path in message and "'resnet18'" in message
    assert "missing (conv1.weight," in message and "unexpected (conv1.0.weight," in message
    # Bottleneck blocks: different shapes as well.
    with pytest.raises(WeightsError, match="shape mismatch"):
        build_model(detection_cfg(f"model.backbone.weights={path}", name="resnet26d"), num_classes=3)


def test_missing_weights_file_names_it(tmp_path):
    path = str(tmp_path / "absent.pth")
    with pytest.raises(WeightsError) as error:
        build_model(detection_cfg(f"model.backbone.weights={path}"), num_classes=3)
    assert "\n" not in str(error.value) and path in str(error.value)


def test_group_norm_is_refused_with_the_choices():
    with pytest.raises(BackboneError, match="frozen_bn, bn, syncbn"):
        build_model(detection_cfg("model.backbone.norm=gn"), num_classes=3)
