"""The localization trainers under torchrun: two CPU processes (gloo) train and evaluate unchanged."""

import json
import os
import subprocess
import sys

import pytest

from classification.data.synthetic_ilsvrc import ensure_synthetic_loc
from tests.classification.test_classifier import TINY as TINY_CLASSIFIER
from tests.conftest import ROOT
from tests.helpers import subprocess_env
from tests.localization.test_rpn_localizer import TINY_LOCALIZER


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_synthetic_loc(str(tmp_path_factory.mktemp("shapes_loc_ddp")),
                                images_per_class={"train": 2, "val": 1}, sides=(56, 72), seed=2)


def numbers(metrics: dict) -> dict:
    """The numeric entries of a metrics dict, those of its sections ("cls", "loc") included."""
    found = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            found.update(numbers(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = value
    return found


def single_process_evaluation(tool, overrides, root, run_dir) -> dict:
    """The metrics of ``run_dir``'s final weights, tested by one process."""
    out = run_dir / "alone"
    common = [*overrides, "device=cpu", f"data.root={root}", f"output_dir={out}"]
    if tool == "train_cls.py":
        command = ["train_cls.py", "--eval-only", "--weights", str(run_dir / "model_final.pth"), *common]
    else:
        command = ["eval_loc.py", "--weights", str(run_dir / "model_final.pth"), "--out", str(out), *common]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", command[0]), *command[1:]],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=subprocess_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    written = [name for name in os.listdir(out) if name.endswith(".json") and name != "config.json"]
    assert len(written) == 1, written
    return json.loads((out / written[0]).read_text())


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
    # The evaluation, sharded over the two processes and gathered, scores the final weights as one
    # process evaluating them alone does.
    alone, gathered = numbers(single_process_evaluation(tool, overrides, tiny_root, tmp_path)), numbers(metrics)
    shared = sorted(set(alone) & set(gathered) - {"seconds_per_image"})
    assert {"top1_cls_err", "num_images"} <= set(shared) or {"top1_err", "num_images"} <= set(shared), shared
    assert {k: gathered[k] for k in shared} == pytest.approx({k: alone[k] for k in shared}, abs=1e-6)
    # Only rank 0 logs: one record per logged iteration, not one per process.
    iterations = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("type", "train") == "train"]
    assert len(iterations) == len(set(iterations))
