"""A run of two processes (torchrun, gloo), stopped at its checkpoint of iteration 2 and resumed by one
process with the same global batch, ends as the uninterrupted two-process run: the same images at each
step after the checkpoint, the same learning rates and logged losses, and (to float rounding) the same
weights; the log says the number of processes changed and what was kept. GroupNorm: BatchNorm's
per-process statistics would differ, legitimately, between one and two processes."""

import shutil

import pytest
import torch

from resnet_engine.trainer import LogWindow

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
def test_two_processes_resumed_by_one_end_as_the_uninterrupted_run(cifar_root, tmp_path):  # noqa: F811
    whole = tmp_path / "whole"
    two = run_torchrun(["--standalone", "--nproc_per_node=2"], tiny_run_args(cifar_root, whole))
    assert two.returncode == 0, two.stderr[-3000:]
    checkpoint = torch.load(whole / "model_0000002.pth", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["log_window"]) == 2
    # Each process summed the losses of its own images: the resumed process must take both windows' mean.
    first, second = (window["losses"]["loss_cls"] for window in checkpoint["log_window"])
    assert abs(first - second) > 1e-2
    # The interrupted run: the two-process run's folder as it was at the checkpoint of iteration 2.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(whole / "model_0000002.pth", resumed / "model_0000002.pth")
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    shutil.copy(whole / "metrics.jsonl", resumed / "metrics.jsonl")  # its records after 2 are dropped on resume
    one = run_alone(tiny_run_args(cifar_root, resumed) + ["--resume"])
    assert one.returncode == 0, one.stderr[-3000:]

    assert ("the checkpoint was written by 2 process(es), this run has 1: kept the global batch "
            "(solver.ims_per_batch=2, now 2 per process), the schedule at iteration 2") in one.stderr
    batches_whole, batches_resumed = global_batches(whole), global_batches(resumed)
    assert sorted(batches_resumed) == [2, 3, 4, 5]
    assert batches_resumed == {step: batches_whole[step] for step in (2, 3, 4, 5)}
    records_whole, records_resumed = train_records(whole), train_records(resumed)
    assert [(r["iteration"], r["lr"]) for r in records_resumed] == [(3, 0.02), (6, pytest.approx(0.002))]
    assert [(r["iteration"], r["lr"]) for r in records_resumed] == [(r["iteration"], r["lr"]) for r in records_whole]
    # The record of iteration 3 averages iterations 1-3: two of them from the two processes' windows.
    assert [r["total_loss"] for r in records_resumed] == pytest.approx([r["total_loss"] for r in records_whole],
                                                                      abs=1e-4)
    resumed_state = torch.load(resumed / "model_final.pth", weights_only=True)
    assert resumed_state["iteration"] == 6 and resumed_state["world_size"] == 1
    assert largest_difference(final_weights(resumed), final_weights(whole)) <= TOLERANCE


def test_log_windows_of_another_number_of_processes_merge_into_their_mean():
    windows = [{"losses": {"cls": 3.0}, "metrics": {"err": 50.0}, "count": 2},
               {"losses": {"cls": 5.0}, "metrics": {"err": 100.0}, "count": 2}]
    merged = LogWindow.mean_of(windows)
    assert (merged.losses, merged.metrics, merged.count) == ({"cls": 4.0}, {"err": 75.0}, 2)
    assert LogWindow.mean_of([None]).count == 0
