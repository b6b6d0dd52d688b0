"""torchrun --max-restarts: a worker killed (SIGKILL) at iteration 3 of a two-process run, and the
restarted workers continue from the checkpoint of iteration 2 (not from scratch, and not refused by the
dead attempt's checkpoints or lock), ending as an uninterrupted run. In one process, with torchrun's
TORCHELASTIC_RESTART_COUNT set by hand: the same decisions, on the engine's toy training."""

import re
import threading
import time

import pytest
import torch

from resnet_engine.run_dir import RunDirectory, RunDirectoryError, release_run_directory
from resnet_engine.setup import setup_run
from tests.resnet_engine.test_run_dir import run_config
from tests.resnet_engine.toy_training import ToyModel, make_trainer

from .multiprocess_training import (
    cifar_root,  # noqa: F401 - a fixture
    final_weights,
    global_batches,
    largest_difference,
    run_alone,
    run_torchrun,
    tiny_run_args,
    train_records,
)

TOLERANCE = 5e-5  # see tests/resnet_engine/test_multinode.py: one batch of 2 against 2 batches of 1


@pytest.mark.slow
def test_restarted_workers_continue_from_the_last_checkpoint(cifar_root, tmp_path):  # noqa: F811
    elastic = tmp_path / "elastic"
    # A store of its own for the workers' process group: in the store torchrun's rendezvous shares with
    # them, the restarted workers can find the dead attempt's addresses (docs/DISTRIBUTED.md).
    run = run_torchrun(["--standalone", "--nproc_per_node=2", "--max-restarts=1"],
                       tiny_run_args(cifar_root, elastic), DIE_AT_ITERATION="3", DIE_ON_RANK="1",
                       TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    assert run.returncode == 0, run.stderr[-3000:]
    # torchrun names the first failure it polls: the killed worker (-9), or the other one, which ends with
    # exit code 1 as soon as its collective breaks.
    assert re.search(r"failed \(exitcode: (-9|1)\) local_rank: [01]", run.stderr), run.stderr[-3000:]
    assert f"torchrun restarted the workers (restart 1): continuing from the last checkpoint in {elastic}" in run.stderr
    assert f"resumed from {elastic / 'model_0000002.pth'} at iteration 2" in run.stderr

    # The first attempt took steps 0-3 (and died in 3); the second started at the checkpoint's step 2.
    first, second = global_batches(elastic, restart=0), global_batches(elastic, restart=1)
    assert sorted(first) == [0, 1, 2, 3] and sorted(second) == [2, 3, 4, 5]
    assert {step: first[step] for step in (2, 3)} == {step: second[step] for step in (2, 3)}
    assert [r["iteration"] for r in train_records(elastic)] == [3, 6]
    assert torch.load(elastic / "model_final.pth", weights_only=True)["iteration"] == 6

    straight = run_alone(tiny_run_args(cifar_root, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert {**first, **second} == global_batches(tmp_path / "straight")
    assert [r["total_loss"] for r in train_records(elastic)] == pytest.approx(
        [r["total_loss"] for r in train_records(tmp_path / "straight")], abs=1e-4)
    assert largest_difference(final_weights(elastic), final_weights(tmp_path / "straight")) <= TOLERANCE


def test_a_claim_waits_for_a_holder_that_ends(tmp_path):
    holder = RunDirectory(str(tmp_path))
    holder.lock()
    with pytest.raises(RunDirectoryError, match="is in use by another run"):
        RunDirectory(str(tmp_path)).lock(wait_seconds=0.3)
    threading.Timer(0.5, holder.release).start()
    waiting = RunDirectory(str(tmp_path))
    start = time.monotonic()
    waiting.lock(wait_seconds=10)
    assert waiting.held and 0.4 <= time.monotonic() - start < 5
    waiting.release()


def crash_at(iteration: int):
    def on_forward(calls: int) -> None:
        if calls == iteration:
            raise RuntimeError("the worker crashed")
    return on_forward


def test_a_restarted_run_continues_from_its_last_checkpoint_without_resume(tmp_path, monkeypatch, caplog):
    with pytest.raises(RuntimeError, match="the worker crashed"):
        make_trainer(ToyModel(on_forward=crash_at(3)), tmp_path, max_iter=6, checkpoint_period=2).train()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    setup_run(run_config(tmp_path))  # not refused by the first attempt's checkpoints
    model = ToyModel()
    trainer = make_trainer(model, tmp_path, max_iter=6, checkpoint_period=2)
    with caplog.at_level("INFO"):
        trainer.train()
    assert (f"torchrun restarted the workers (restart 1): continuing from the last checkpoint in {tmp_path}"
            in caplog.text)
    assert trainer.start_iter == 2 and model.calls == 4  # iterations 2-5, not 0-5
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 6


def test_a_restart_before_the_first_checkpoint_starts_from_scratch(tmp_path, monkeypatch, caplog):
    with pytest.raises(RuntimeError, match="the worker crashed"):
        make_trainer(ToyModel(on_forward=crash_at(1)), tmp_path, max_iter=6, checkpoint_period=2).train()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    setup_run(run_config(tmp_path))
    model = ToyModel()
    with caplog.at_level("INFO"):
        make_trainer(model, tmp_path, max_iter=6, checkpoint_period=2).train()
    assert f"no checkpoint in {tmp_path}: starting from scratch" in caplog.text
    assert model.calls == 6


def test_without_a_restart_a_fresh_run_is_still_refused(tmp_path, monkeypatch):
    make_trainer(ToyModel(), tmp_path, max_iter=2).train()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(RunDirectoryError, match="holds the checkpoints of an earlier run"):
        setup_run(run_config(tmp_path))
    release_run_directory(str(tmp_path))
