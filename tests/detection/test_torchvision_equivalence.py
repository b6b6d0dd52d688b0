"""An imported torchvision Faster R-CNN gives torchvision's detections in this toolkit."""

import subprocess
import sys

import pytest
import torch

from detection.config import load_detection_config
from detection.convert import convert_torchvision_detector
from detection.inference import load_detector
from tests.detection.tv_reference import calibrated_torchvision_detector, shapes_image

SIZE_OVERRIDES = ["input.min_size_test=320", "input.max_size_test=640"]


def compare(reference: dict, ours: dict) -> None:
    assert len(reference["boxes"]) > 10, "the reference should detect something"
    assert len(ours["boxes"]) == len(reference["boxes"])
    assert torch.equal(ours["labels"], reference["labels"])
    assert (ours["boxes"] - reference["boxes"]).abs().max() <= 1e-3
    assert (ours["scores"] - reference["scores"]).abs().max() <= 1e-4


@pytest.mark.parametrize("depth", [50, 18])
def test_same_detections_as_torchvision(depth, tmp_path, repo_root):
    reference_model = calibrated_torchvision_detector(320, 640, depth=depth)
    # 320 x 448 needs no resize at min_size 320 / max_size 640.
    image = torch.from_numpy(shapes_image(7, 320, 448)).permute(2, 0, 1).contiguous()
    with torch.no_grad():
        reference = reference_model([image.float() / 255])[0]

    torch.save(reference_model.state_dict(), tmp_path / "tv.pth")
    subprocess.run([sys.executable, f"{repo_root}/tools/convert_weights.py", "--from", "torchvision",
                    "--in", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "ours.pth")], check=True,
                   capture_output=True)
    cfg = load_detection_config(f"{repo_root}/configs/tv_fasterrcnn_r50_fpn.yaml",
                                SIZE_OVERRIDES + [f"model.backbone.depth={depth}"])
    model, category_map = load_detector(cfg, str(tmp_path / "ours.pth"), torch.device("cpu"))
    with torch.no_grad():
        ours = model([{"image": image}])[0]
    compare(reference, ours)
    # Output labels are torchvision's indices (the COCO category ids of its COCO models).
    assert category_map.category_ids == list(range(1, 91))


def test_converter_rejects_other_models():
    from engine.errors import UserError

    with pytest.raises(UserError, match="not a torchvision FasterRCNN"):
        convert_torchvision_detector({"conv1.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="fasterrcnn_resnet50_fpn_v2"):
        convert_torchvision_detector({"rpn.head.conv.1.0.weight": torch.zeros(1)})
