"""Import torchvision Faster R-CNN checkpoints into this toolkit's detector.

torchvision's ``fasterrcnn_resnet50_fpn`` (and any ``FasterRCNN`` on ``resnet_fpn_backbone`` of
depth 18..152) has the same structure as this toolkit's FPN detector with the settings of
``configs/tv_fasterrcnn_r50_fpn.yaml``; only a few parameter names differ. Class index 0 is the
background in both, and torchvision's label indices are kept as the output category ids (for its
COCO models these are the COCO category ids).
"""

from __future__ import annotations

import os
import re

import torch

from backbones.weights import read_state_dict
from resnet_engine.errors import UserError

# torchvision name pattern -> this toolkit's name
RENAMES = (
    (r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv."),  # torchvision >= 0.13 wraps the conv
    (r"^roi_heads\.box_predictor\.", "roi_heads.predictor."),
)
UNSUPPORTED = {
    "rpn.head.conv.1.0.weight": "fasterrcnn_resnet50_fpn_v2 (two RPN convs, a conv box head and BN in the FPN)",
    "roi_heads.mask_head.0.0.weight": "Mask R-CNN (mask heads)",
}


def convert_torchvision_detector(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename a torchvision FasterRCNN state dict; return it and the detector's metadata."""
    for key, model_name in UNSUPPORTED.items():
        if key in state:
            raise UserError(f"{model_name} is not supported by the converter; use fasterrcnn_resnet50_fpn "
                            f"or a FasterRCNN on resnet_fpn_backbone")
    if "roi_heads.box_predictor.cls_score.weight" not in state or "backbone.body.conv1.weight" not in state:
        raise UserError("not a torchvision FasterRCNN state dict (roi_heads.box_predictor.cls_score.weight and "
                        "backbone.body.conv1.weight are missing)")
    converted = {}
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in RENAMES:
            name = re.sub(pattern, replacement, name)
        converted[name] = tensor
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    meta = {
        "arch": "fpn",
        "depth": infer_depth(state),
        "num_classes": num_classes,
        "category_ids": list(range(1, num_classes + 1)),
        "source": "torchvision",
    }
    return converted, meta


def infer_depth(state: dict[str, torch.Tensor]) -> int:
    blocks = {}
    for name in state:
        match = re.match(r"backbone\.body\.layer(\d)\.(\d+)\.", name)
        if match:
            layer, index = int(match.group(1)), int(match.group(2))
            blocks[layer] = max(blocks.get(layer, 0), index + 1)
    bottleneck = any(k.startswith("backbone.body.layer1.0.conv3") for k in state)
    units = tuple(blocks.get(i, 0) for i in (1, 2, 3, 4))
    table = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34 if not bottleneck else 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
    if units not in table:
        raise UserError(f"cannot tell the ResNet depth of this backbone (units per stage {units})")
    return table[units]


def convert_file(source: str, destination: str) -> dict:
    """Convert the torchvision state dict ``source`` into a detector file at ``destination`` (its folder made
    as needed); returns the detector's metadata."""
    state = read_state_dict(source)
    converted, meta = convert_torchvision_detector(state)
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    torch.save({"model": converted, "meta": meta}, destination)
    return meta
