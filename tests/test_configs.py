"""Every shipped config loads and validates (a typo in a key would stop a user's run at once)."""

import glob
import os

import pytest

from detection.config import load_detection_config
from localization.config import load_classification_config, load_localization_config
from tests.conftest import ROOT

ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
CLASSIFICATION_CONFIGS = [p for p in ALL_CONFIGS if os.path.basename(p).startswith(("cls_", "ilsvrc_cls"))]
LOCALIZATION_CONFIGS = [p for p in ALL_CONFIGS if os.path.basename(p).startswith(("shapes_loc", "ilsvrc_loc"))]
DETECTION_CONFIGS = [p for p in ALL_CONFIGS if p not in CLASSIFICATION_CONFIGS + LOCALIZATION_CONFIGS]


def test_every_config_has_a_loader():
    assert len(DETECTION_CONFIGS) >= 8 and CLASSIFICATION_CONFIGS and LOCALIZATION_CONFIGS
    assert sorted(DETECTION_CONFIGS + CLASSIFICATION_CONFIGS + LOCALIZATION_CONFIGS) == ALL_CONFIGS


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=os.path.basename)
def test_detection_config_loads(path):
    cfg = load_detection_config(path, [])
    assert cfg.model.arch in ("c4", "fpn") and cfg.solver.max_iter > 0


@pytest.mark.parametrize("path", CLASSIFICATION_CONFIGS, ids=os.path.basename)
def test_classification_config_loads(path):
    cfg = load_classification_config(path, [])
    assert cfg.input.crop > 0 and cfg.solver.base_lr > 0


@pytest.mark.parametrize("path", LOCALIZATION_CONFIGS, ids=os.path.basename)
def test_localization_config_loads(path):
    cfg = load_localization_config(path, [])
    assert cfg.task in ("rpn", "rcnn") and cfg.solver.max_iter > 0
