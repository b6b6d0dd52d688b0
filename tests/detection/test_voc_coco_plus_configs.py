"""The VOC "baseline+++" configs (paper Tables 10-11): the COCO test-dev model fine-tuned on VOC with the
test-time system of coco2014_r101_paper.yaml, as their comments say; a missing COCO model is one line."""

import os
import subprocess
import sys

import pytest

from detection.config import load_detection_config
from tests.conftest import ROOT
from tests.helpers import subprocess_env


def config(name, *overrides):
    return load_detection_config(os.path.join(ROOT, "configs", name), list(overrides))


@pytest.mark.parametrize("name, train_split, test_split, metric", [
    ("voc07_r101_coco_plus.yaml", "2007_trainval+2012_trainval", "2007_test", "voc2007"),
    ("voc12_r101_coco_plus.yaml", "2007_trainval+2007_test+2012_trainval", "2012_test", "voc2010"),
])
def test_coco_plus_configs_fine_tune_the_coco_testdev_model(name, train_split, test_split, metric):
    cfg = config(name)
    coco = config("coco2014_r101_paper_testdev.yaml")
    full_system = config("coco2014_r101_paper.yaml")
    assert cfg.model.weights == os.path.join(coco.output_dir, "model_final.pth")
    assert cfg.model.weights_keep_classes_by_name
    # Every model key is the COCO model's, so that its tensors fit (the class rows are kept by name).
    starting_keys = ("weights", "weights_keep_classes_by_name")
    assert {k: v for k, v in cfg.model.items() if k not in starting_keys} == \
        {k: v for k, v in coco.model.items() if k not in starting_keys}
    for key in ("box_refinement", "box_voting", "scales", "rpn_scale"):
        assert cfg.test[key] == full_system.test[key], key
    assert cfg.model.roi_head.global_context and list(cfg.test.scales) == [200, 400, 600, 800, 1000]
    assert (cfg.data.train.format, cfg.data.train.split, cfg.data.test.split) == ("voc", train_split, test_split)
    assert cfg.test.metric == metric
    assert cfg.solver.scheme == "joint" and (cfg.solver.max_iter, list(cfg.solver.steps)) == (30000, [20000])
    assert cfg.output_dir != config("voc07_r101.yaml").output_dir


def test_missing_coco_model_is_one_error_line_when_training_starts(tmp_path):
    voc = os.path.join(ROOT, "datasets", "shapes_voc")
    data = [f"data.{part}.{key}={value}" for part, split in (("train", "shapes_train"), ("test", "shapes_val"))
            for key, value in (("root", voc), ("split", split), ("names", os.path.join(voc, "classes.txt")))]
    missing = tmp_path / "coco_model_final.pth"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_det.py"), "--cfg",
         os.path.join(ROOT, "configs", "voc07_r101_coco_plus.yaml"), "device=cpu", f"output_dir={tmp_path / 'out'}",
         "data.synthetic=shapes_voc", *data, f"model.weights={missing}"],
        capture_output=True, text=True, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), timeout=240)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: checkpoint not found: {missing}"
