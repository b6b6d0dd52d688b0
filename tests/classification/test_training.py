"""Training a CIFAR classifier through train_classifier, as tools/train_cls.py does, on a tiny binary CIFAR
set: the loss falls, the log and the checkpoints are written, and a run stopped by a signal and resumed
ends with the weights and learning rates of an uninterrupted one, also across the metric warm-up's switch."""

import json
import logging
import os
import signal

import pytest
import torch

from classification import training
from classification.training import train_classifier
from resnet_engine.checkpoint import CheckpointError, load_checkpoint
from resnet_engine.trainer import StoppedBySignal

from .tiny_cifar import tiny_config, write_brightness_cifar


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_brightness_cifar(tmp_path_factory.mktemp("cifar"))


def training_records(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        return [r for r in map(json.loads, handle) if r["type"] == "train"]


def test_a_short_run_lowers_the_loss_and_writes_its_log_and_checkpoints(cifar_root, tmp_path):
    run = train_classifier(tiny_config(cifar_root, tmp_path / "run"))
    records = training_records(run.output_dir)
    assert [r["iteration"] for r in records] == list(range(1, 31))
    losses = [r["loss_cls"] for r in records]
    assert losses[0] == pytest.approx(2.3, abs=0.3)  # about ln(10) for ten classes at the start
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    # Each record is one batch of 16: its top-1 error is a whole number of wrong images out of 16.
    assert all(0 <= r["train_error"] <= 100 and (r["train_error"] / 6.25).is_integer() for r in records)
    assert [r["lr"] for r in records] == pytest.approx([0.05] * 20 + [0.005] * 10, rel=1e-12)
    names = sorted(name for name in os.listdir(run.output_dir) if name.endswith(".pth"))
    assert names == ["model_0000010.pth", "model_0000020.pth", "model_best.pth", "model_final.pth"]
    assert load_checkpoint(run.weights)["iteration"] == 30 and run.weights == str(tmp_path / "run" / "model_final.pth")
    with open(os.path.join(run.output_dir, "metrics.json"), encoding="utf-8") as handle:
        assert json.load(handle) == run.metrics
    assert run.metrics["test"]["num_images"] == 50
    assert os.path.isfile(os.path.join(run.output_dir, "config.yaml"))


def stop_at_call(monkeypatch, call: int) -> None:
    """SIGTERM to this process during the ``call``-th training forward of the classifier built next."""
    build = training.build_classifier

    def build_and_stop(*args, **kwargs):
        model = build(*args, **kwargs)
        calls = []

        def count(module, inputs):
            if module.training:
                calls.append(None)
                if len(calls) == call:
                    os.kill(os.getpid(), signal.SIGTERM)

        model.register_forward_pre_hook(count)
        return model

    monkeypatch.setattr(training, "build_classifier", build_and_stop)


def test_a_resumed_run_ends_as_an_uninterrupted_one_across_the_warmup_switch(cifar_root, tmp_path, monkeypatch):
    """The warm-up's threshold is one every error is below, so it lasts exactly one window of 4 iterations:
    iterations 0-3 at 0.1 x 0.05, 4-7 at 0.05, 8-11 at 0.005 (the step at 8). The run stopped after
    iteration 1 must keep the two errors of its window in its checkpoint, or the resumed run would switch
    two iterations late."""
    warmup = ["solver.warmup_until.metric=train_error", "solver.warmup_until.below=101",
              "solver.warmup_until.window=4", "solver.max_iter=12", "solver.steps=[8]", "solver.checkpoint_period=0"]
    whole = train_classifier(tiny_config(cifar_root, tmp_path / "whole", *warmup))

    interrupted = tiny_config(cifar_root, tmp_path / "interrupted", *warmup)
    stop_at_call(monkeypatch, 2)
    with pytest.raises(StoppedBySignal, match="stopped by SIGTERM at iteration 2"):
        train_classifier(interrupted)
    saved = load_checkpoint(str(tmp_path / "interrupted" / "model_0000002.pth"))
    assert saved["scheduler"]["metric_warmup"]["ended_at"] is None
    assert len(saved["scheduler"]["metric_warmup"]["recent"]) == 2
    monkeypatch.undo()
    resumed = train_classifier(interrupted, resume=True)

    expected = [0.005] * 4 + [0.05] * 4 + [0.005] * 4
    assert [r["lr"] for r in training_records(whole.output_dir)] == pytest.approx(expected, rel=1e-12)
    records, resumed_records = training_records(whole.output_dir), training_records(resumed.output_dir)
    for key in ("iteration", "lr", "loss_cls", "train_error"):
        assert [r[key] for r in resumed_records] == pytest.approx([r[key] for r in records], rel=1e-6), key
    first, second = load_checkpoint(whole.weights), load_checkpoint(resumed.weights)
    assert first["scheduler"]["metric_warmup"] == second["scheduler"]["metric_warmup"]
    assert second["scheduler"]["metric_warmup"]["ended_at"] == 4
    for name, tensor in first["model"].items():
        torch.testing.assert_close(second["model"][name], tensor, msg=name)
    assert resumed.metrics["test"]["top1_err"] == whole.metrics["test"]["top1_err"]


def test_a_model_best_chosen_on_the_test_set_is_said_to_be(cifar_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="classification.training"):
        train_classifier(tiny_config(cifar_root, tmp_path / "trainval", "solver.max_iter=2", "test.eval_period=1"))
        train_classifier(tiny_config(cifar_root, tmp_path / "train", "solver.max_iter=2", "test.eval_period=1",
                                     "data.train_split=train", "data.val_images=10"))
    said = [m for m in caplog.messages if m.startswith("model_best.pth is chosen on the test set")]
    assert said == ["model_best.pth is chosen on the test set (data.train_split=trainval holds no images out): its "
                    "error is not a test error; report model_final.pth's (metrics.json)"]


def test_a_resume_that_changes_the_held_out_images_is_refused(cifar_root, tmp_path):
    """Images already trained on would be scored as held out from then on."""
    first = tiny_config(cifar_root, tmp_path / "run", "data.train_split=train", "data.val_images=10",
                        "solver.max_iter=2", "solver.checkpoint_period=0")
    train_classifier(first)
    changed = tiny_config(cifar_root, tmp_path / "run", "data.train_split=train", "data.val_images=30",
                          "solver.max_iter=2", "solver.checkpoint_period=0")
    with pytest.raises(CheckpointError, match=r"cannot resume from .*model_\w+.pth with data.val_images: 10 -> 30: "
                                              r"the training and held-out images would change mid-run"):
        train_classifier(changed, resume=True)


def test_the_solver_speed_switches_apply_to_the_classifier_and_change_only_rounding(cifar_root, tmp_path):
    """solver.channels_last and solver.winograd are the shared solver keys: the classification trainer
    applies them (it used to ignore them without a word), and the run trains the same to float rounding."""
    built = []
    original = training.apply_speed_switches

    def record(model, solver):
        built.append(original(model, solver))
        return built[-1]

    plain = train_classifier(tiny_config(cifar_root, tmp_path / "plain", "solver.max_iter=4"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "apply_speed_switches", record)
        fast = train_classifier(tiny_config(cifar_root, tmp_path / "fast", "solver.max_iter=4",
                                            "solver.channels_last=true", "solver.winograd=true",
                                            "solver.winograd_channels=[8,64]", "solver.winograd_min_pixels=16"))
    convs = [m for m in built[0].modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    from resnet_ops.winograd import WinogradConv2d
    assert any(isinstance(m, WinogradConv2d) for m in built[0].modules())
    plain_losses = [r["loss_cls"] for r in training_records(plain.output_dir)]
    fast_losses = [r["loss_cls"] for r in training_records(fast.output_dir)]
    # The first loss is before any step: rounding alone; the steps after it amplify the rounding a little.
    assert fast_losses[0] == pytest.approx(plain_losses[0], rel=1e-5)
    assert fast_losses == pytest.approx(plain_losses, rel=1e-2)
