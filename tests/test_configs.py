"""Every shipped config loads and validates (a typo in a key would stop a user's run at once)."""

import glob
import os

import pytest

from detection.config import load_detection_config
from tests.conftest import ROOT

DETECTION_CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
                           if not os.path.basename(p).startswith(("base_", "ilsvrc", "shapes_loc", "cls_")))


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=os.path.basename)
def test_detection_config_loads(path):
    cfg = load_detection_config(path, [])
    assert cfg.model.arch in ("c4", "fpn") and cfg.solver.max_iter > 0
