"""The localization trainers under torchrun: two CPU processes (gloo) train and evaluate unchanged."""

import json
import os
import subprocess
import sys

import pytest

from localization.data.synthetic import ensure_synthetic_loc
from tests.conftest import ROOT
from tests.helpers import subprocess_env
from tests.localization.test_classifier import TINY as TINY_CLASSIFIER
from tests.localization.test_rpn_localizer import TINY_LOCALIZER


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_synthetic_loc(str(tmp_path_factory.mktemp("shapes_loc_ddp")),
                                images_per_class={"train": 2, "val": 1}, sides=(56, 72), seed=2)


@pytest.mark.parametrize("tool, overrides", [("train_cls.py", TINY_CLASSIFIER), ("train_loc.py", TINY_LOCALIZER)])
def test_trainer_runs_under_torchrun_with_two_processes(tool, overrides, tiny_root, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               os.path.join(ROOT, "tools", tool), *overrides, "device=cpu", f"data.root={tiny_root}",
               f"output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=subprocess_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "model_final.pth").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics, "the gathered evaluation wrote no metrics"
    # Only rank 0 logs: one record per logged iteration, not one per process.
    iterations = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("type", "train") == "train"]
    assert len(iterations) == len(set(iterations))
