"""Helpers of the multi-process training tests: a tiny CIFAR classifier run by tests/resnet_engine/cls_worker.py
alone or under ``python -m torch.distributed.run``, and what a test reads back from its output folder.

The net normalizes with GroupNorm (per-image statistics): with BatchNorm, the statistics of a process's
share of the batch would legitimately differ between 1 and 2 processes, and so would the weights."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.classification.tiny_cifar import write_brightness_cifar
from tests.conftest import ROOT
from tests.helpers import subprocess_env

WORKER = os.path.join(ROOT, "tests", "resnet_engine", "cls_worker.py")
MAX_ITER = 6


def tiny_run_args(cifar_root, output_dir, *overrides: str) -> list[str]:
    """tools/train_cls.py's arguments: depth 8 with GroupNorm, global batch 2, 6 iterations, a checkpoint
    every 2 and a log record every 3 (so that a resumed window spans the checkpoint), the lr divided by
    10 after 4, no evaluation before the end."""
    return ["--cfg", os.path.join(ROOT, "configs", "base_cifar.yaml"), f"data.root={cifar_root}",
            f"output_dir={output_dir}", "model.backbone.depth=8", "model.backbone.norm=gn",
            "solver.ims_per_batch=2", "solver.base_lr=0.02", f"solver.max_iter={MAX_ITER}", "solver.steps=[4]",
            "solver.log_period=3", "solver.checkpoint_period=2", "test.eval_period=0", "test.ims_per_batch=25",
            "data.num_workers=0", "device=cpu", "seed=5", *overrides]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_brightness_cifar(tmp_path_factory.mktemp("cifar"))


def free_port() -> int:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    except OSError as error:
        pytest.skip(f"cannot bind 127.0.0.1 for torchrun's rendezvous ({error})")


def environment(**extra: str) -> dict:
    return subprocess_env(OMP_NUM_THREADS="1", **extra)


def run_alone(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WORKER, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=environment(**env))


def torchrun_command(*options: str) -> list[str]:
    """The venv's own torchrun: nothing needs to be on PATH."""
    return [sys.executable, "-m", "torch.distributed.run", *options, WORKER]


def run_torchrun(options: list[str], args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*options) + args, capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=environment(**env))


def final_weights(output_dir) -> dict:
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)["model"]


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


def train_records(output_dir) -> list[dict]:
    lines = open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8").read().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "train"]


def global_batches(output_dir, restart: int = 0) -> dict[int, list[int]]:
    """{step: the images of the step over all processes, in rank order} of one attempt of a run."""
    steps: dict[int, list[int]] = {}
    rank = 0
    while os.path.exists(path := os.path.join(output_dir, f"batches.rank{rank}.restart{restart}.jsonl")):
        for line in open(path, encoding="utf-8").read().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], []).extend(record["indices"])
        rank += 1
    return steps
