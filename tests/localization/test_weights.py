"""The checkpoints the localizers load: another task's or stage's file given where a per-class RPN is expected is
named as what it is, with what to give instead."""

import pytest
import torch

from localization.weights import load_proposal_rpn
from resnet_engine.errors import UserError

FIX = "set rcnn.rpn_weights to output/<rpn run>/model_final.pth"


@pytest.mark.parametrize("meta, config, what", [
    ({"task": "classification"}, "model:\n  backbone:\n    plain: false\n",
     "is a classifier checkpoint of tools/train_cls.py, not a per-class RPN"),
    ({"task": "detection", "arch": "fpn"}, "model:\n  arch: fpn\n",
     "is a detector checkpoint of tools/train_det.py, not a per-class RPN"),
    ({"task": "localization", "stage": "rcnn"}, "task: rcnn\n",
     "is an R-CNN checkpoint of tools/train_loc.py (task: rcnn), not the per-class RPN that makes its proposals"),
    ({}, "", "is not a per-class RPN checkpoint of tools/train_loc.py"),
], ids=["classifier", "detector", "rcnn", "unmarked"])
def test_rpn_weights_of_another_kind_say_what_the_file_is(tmp_path, meta, config, what):
    """A classifier's or detector's config was read with the localization schema: an omegaconf traceback
    (Key 'plain' not in 'BackboneConfig')."""
    path = tmp_path / "model_final.pth"
    torch.save({"model": {}, "meta": meta, "config": config}, path)
    with pytest.raises(UserError) as error:
        load_proposal_rpn(None, None, str(path))
    assert str(error.value) == f"{path} {what}: {FIX}"
