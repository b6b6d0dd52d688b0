"""A torchvision Faster R-CNN with random weights that behaves like a trained one, as a test reference."""

import numpy as np
import torch
import torchvision

from detection.data.shapes import render_image


def shapes_image(seed: int, height: int, width: int) -> np.ndarray:
    """A synthetic image of exactly (height, width) with shapes on a textured background."""
    image, _ = render_image(np.random.default_rng(seed))
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def calibrated_torchvision_detector(min_size: int, max_size: int, depth: int = 50, seed: int = 0):
    """fasterrcnn_resnet50_fpn (or resnet_fpn_backbone of ``depth``) with measured BN statistics.

    Random weights are made to act like trained ones: the backbone's BatchNorm statistics are
    measured on a few images (train-mode forward, momentum=None), and the RPN objectness and
    class scores are sharpened so that scores are spread out instead of tied.
    """
    torch.manual_seed(seed)
    if depth == 50:
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=min_size, max_size=max_size)
    else:
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, trainable_layers=5)
        model = torchvision.models.detection.FasterRCNN(backbone, num_classes=91, min_size=min_size,
                                                        max_size=max_size)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    images = [torch.from_numpy(shapes_image(100 + i, min_size, int(min_size * 1.4))).permute(2, 0, 1).float() / 255
              for i in range(4)]
    with torch.no_grad():
        batch, _ = model.transform(images)
        model.backbone.train()
        model.backbone(batch.tensors)
        model.eval()
        model.rpn.head.cls_logits.weight.mul_(100)
        model.roi_heads.box_predictor.cls_score.weight.mul_(4)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(3)
    return model
