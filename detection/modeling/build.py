"""Build a detector from the ``model`` section of a detection config."""

from __future__ import annotations

from omegaconf import OmegaConf

from backbones.config import build_from_config as build_resnet_from_config

from .anchors import AnchorGenerator
from .backbone import ResNetFPN, build_timm_c4, build_timm_features
from .box_heads import BoxPredictor, FCHead, Res5Head
from .ensemble import DetectorEnsemble, EnsembleTestTimeDetector
from .faster_rcnn import FasterRCNN
from .matching import Matcher
from .poolers import PyramidPooler, SingleLevelPooler
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork, RPNHead
from .test_time import TestTimeDetector, TestTimeOptions


def build_model(cfg, num_classes: int, backbone_weights: bool = True) -> FasterRCNN:
    """``cfg`` is a full detection config; ``num_classes`` counts foreground classes.

    ``backbone_weights=False`` skips loading the ImageNet weights of ``model.backbone.weights``
    (when a whole detector's weights are loaded next).
    """
    model_cfg = cfg.model
    backbone_cfg = model_cfg.backbone if backbone_weights else OmegaConf.merge(model_cfg.backbone, {"weights": None})
    if model_cfg.arch == "c4":
        backbone, rpn_features, head_in, pooler, box_head = _c4_parts(model_cfg, backbone_cfg)
    else:
        backbone, rpn_features, head_in, pooler, box_head = _fpn_parts(model_cfg, backbone_cfg)
    anchors = AnchorGenerator([list(s) for s in model_cfg.anchors.sizes], list(model_cfg.anchors.aspect_ratios),
                              None if model_cfg.anchors.torchvision_strides
                              else [backbone.out_strides[name] for name in rpn_features])
    rpn_cfg = model_cfg.rpn
    rpn = RegionProposalNetwork(
        rpn_features,
        RPNHead(head_in, anchors.num_anchors_per_location, rpn_cfg.conv_channels),
        anchors,
        Matcher(rpn_cfg.fg_iou_thresh, rpn_cfg.bg_iou_thresh, allow_low_quality=True),
        batch_size_per_image=rpn_cfg.batch_size_per_image,
        positive_fraction=rpn_cfg.positive_fraction,
        pre_nms_topk=(rpn_cfg.pre_nms_topk_train, rpn_cfg.pre_nms_topk_test),
        post_nms_topk=(rpn_cfg.post_nms_topk_train, rpn_cfg.post_nms_topk_test),
        nms_thresh=rpn_cfg.nms_thresh,
        min_size=rpn_cfg.min_size,
        smooth_l1_beta=rpn_cfg.smooth_l1_beta,
        loss_weight=rpn_cfg.loss_weight,
        boundary_thresh=rpn_cfg.boundary_thresh,
    )
    head_cfg = model_cfg.roi_head
    context = head_cfg.global_context
    roi_heads = RoIHeads(
        pooler,
        box_head,
        BoxPredictor(box_head.out_channels * (2 if context else 1), num_classes),
        # Background is [bg_iou_low, fg_iou_thresh): no band of ignored RoIs between the two.
        Matcher(head_cfg.fg_iou_thresh, head_cfg.fg_iou_thresh, allow_low_quality=False,
                bg_iou_low=head_cfg.bg_iou_low),
        batch_size_per_image=head_cfg.batch_size_per_image,
        positive_fraction=head_cfg.positive_fraction,
        bbox_reg_weights=list(head_cfg.bbox_reg_weights),
        smooth_l1_beta=head_cfg.smooth_l1_beta,
        score_thresh=cfg.test.score_thresh,
        nms_thresh=cfg.test.nms_thresh,
        detections_per_img=cfg.test.detections_per_img,
        global_context=context,
    )
    return FasterRCNN(backbone, rpn, roi_heads, list(cfg.input.pixel_mean), list(cfg.input.pixel_std),
                      cfg.input.size_divisibility, cfg.input.format)


def _c4_parts(model_cfg, backbone_cfg):
    """Shared trunk conv1..res4 (stride 16); res5 runs per region on 14x14 pooled features."""
    if _timm_name(backbone_cfg):
        trunk, res5, res5_channels = build_timm_c4(backbone_cfg)
    else:
        trunk = build_resnet_from_config(backbone_cfg, out_features=["res4"])
        res5_channels = trunk.out_channels["res5"]
        res5 = trunk.detach_stage("res5")
    head_cfg = model_cfg.roi_head
    pooler = SingleLevelPooler("res4", head_cfg.pooler_resolution, trunk.out_strides["res4"],
                               head_cfg.sampling_ratio, head_cfg.pooler, head_cfg.roi_align_impl)
    return trunk, ["res4"], trunk.out_channels["res4"], pooler, Res5Head(res5, res5_channels)


def _fpn_parts(model_cfg, backbone_cfg):
    in_features = list(model_cfg.fpn.in_features)
    if _timm_name(backbone_cfg):
        body = build_timm_features(backbone_cfg, in_features)
    else:
        body = build_resnet_from_config(backbone_cfg, out_features=in_features)
    backbone = ResNetFPN(body, in_features, model_cfg.fpn.out_channels)
    head_cfg = model_cfg.roi_head
    pooled = backbone.out_features[:-1]  # P6 only feeds the RPN
    pooler = PyramidPooler(pooled, [backbone.out_strides[name] for name in pooled], head_cfg.pooler_resolution,
                           head_cfg.sampling_ratio, head_cfg.roi_align_impl)
    box_head = FCHead(model_cfg.fpn.out_channels, head_cfg.pooler_resolution, head_cfg.num_fc, head_cfg.fc_dim)
    return backbone, list(backbone.out_features), model_cfg.fpn.out_channels, pooler, box_head


def _timm_name(backbone_cfg) -> str:
    """model.backbone.timm_name, "" for sections written before the key existed."""
    return getattr(backbone_cfg, "timm_name", "") or ""


def build_test_model(model: FasterRCNN, cfg):
    """``model`` itself, or wrapped for the paper's test-time improvements when the config asks for any
    (a :class:`DetectorEnsemble` by :class:`EnsembleTestTimeDetector`)."""
    options = TestTimeOptions.from_config(cfg.test, cfg.input)
    if not options.any_enabled:
        return model
    return EnsembleTestTimeDetector(model, options) if isinstance(model, DetectorEnsemble) else TestTimeDetector(model, options)


def test_needs_original_images(cfg) -> bool:
    """Test-time multi-scale and refinement resize images themselves."""
    return TestTimeOptions.from_config(cfg.test, cfg.input).any_enabled
