"""Resuming with a changed config: one line for a model or optimizer that no longer fits, and the
current config's optimizer settings for everything else."""

import json
import os
import random

import numpy as np
import pytest
import torch

from resnet_engine.checkpoint import CheckpointError, load_checkpoint
from tests.resnet_engine.toy_training import ToyModel, make_trainer

CONFIG = "model:\n  inputs: 2\nsolver:\n  optimizer: sgd\n  base_lr: 0.01\n"


def test_a_changed_model_is_one_line_naming_the_change(tmp_path):
    make_trainer(ToyModel(), tmp_path, config_text=CONFIG).train()
    changed = CONFIG.replace("inputs: 2", "inputs: 3")
    (tmp_path / "config.yaml").write_text(CONFIG)
    trainer = make_trainer(ToyModel(inputs=3), tmp_path, config_text=changed)
    with pytest.raises(CheckpointError) as error:
        trainer.resume()
    assert (tmp_path / "config.yaml").read_text() == CONFIG, "the run's own config must stay"
    assert str(error.value) == (
        f"cannot resume from {tmp_path / 'model_final.pth'}: its model differs from this config's (parameters: 1 of "
        f"another shape; e.g. linear.weight is [1, 2] there, [1, 3] here); the config changed model.inputs: "
        f"2 -> 3: resume with the run's own config (its config.yaml), or start the new setting in another output_dir")


def test_a_changed_optimizer_is_one_line_instead_of_a_key_error(tmp_path):
    make_trainer(ToyModel(), tmp_path, config_text=CONFIG).train()
    changed = CONFIG.replace("optimizer: sgd", "optimizer: adamw")
    trainer = make_trainer(ToyModel(), tmp_path, optimizer="adamw", config_text=changed)
    with pytest.raises(CheckpointError) as error:
        trainer.resume()
    assert str(error.value) == (
        f"cannot resume from {tmp_path / 'model_final.pth'}: it holds the state of SGD, this config trains with "
        f"an Adam-type optimizer; the config changed solver.optimizer: sgd -> adamw: resume with the run's own "
        f"config (its config.yaml), or start the new setting in another output_dir")


def test_other_parameter_groups_are_one_line(tmp_path):
    make_trainer(ToyModel(), tmp_path).train()
    model = ToyModel()
    model.linear.bias.requires_grad_(False)  # another set of trained parameters
    with pytest.raises(CheckpointError, match=r"its optimizer has parameter groups of \[2\] parameters, this "
                                              r"config's has \[1\] \(which parameters train changed\)"):
        make_trainer(model, tmp_path).resume()


def test_resume_applies_the_current_learning_rate_weight_decay_and_momentum(tmp_path, caplog):
    make_trainer(ToyModel(), tmp_path, max_iter=4, checkpoint_period=2, steps=[3], base_lr=0.1,
                 weight_decay=1e-4, momentum=0.9, config_text=CONFIG).train()
    changed = CONFIG.replace("base_lr: 0.01", "base_lr: 0.001")
    trainer = make_trainer(ToyModel(), tmp_path, max_iter=6, steps=[3], base_lr=0.001, weight_decay=5e-4,
                           momentum=0.5, config_text=changed)
    with caplog.at_level("WARNING"):
        assert trainer.resume() and trainer.start_iter == 4
    assert (tmp_path / "config.yaml").read_text() == changed  # the run goes on with this config now
    group = trainer.optimizer.param_groups[0]
    # Iteration 4 is past the step at 3: the current base LR times gamma, not the checkpoint's.
    assert group["lr"] == pytest.approx(0.001 * 0.1)
    assert group["weight_decay"] == 5e-4 and group["momentum"] == 0.5
    assert trainer.scheduler.base_lrs == [pytest.approx(0.001)] * len(trainer.optimizer.param_groups)
    assert trainer.optimizer.state, "the momentum buffers come from the checkpoint"
    assert "resuming with settings that differ from the checkpoint's (the current ones apply): " \
           "solver.base_lr: 0.01 -> 0.001" in caplog.text
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 * 0.1)


def batches_by_iteration(start: int):
    """Each iteration's batch depends on the iteration alone: a resumed run sees the batches an uninterrupted
    one does."""
    iteration = start
    while True:
        generator = torch.Generator().manual_seed(iteration)
        yield [{"x": torch.randn(2, generator=generator)} for _ in range(4)]
        iteration += 1


def train_records(out_dir) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == "train"]


def test_the_first_record_after_a_resume_averages_its_whole_log_period(tmp_path):
    # Records every 4 iterations, checkpoints every 3: the run resumes from iteration 6, in the middle of the
    # window of iterations 5-8, whose record must still average all four of them.
    keys = dict(max_iter=8, log_period=4, checkpoint_period=3, make_loader=batches_by_iteration)
    torch.manual_seed(0)
    make_trainer(ToyModel(), tmp_path / "whole", **keys).train()
    interrupted = tmp_path / "resumed"
    torch.manual_seed(0)
    make_trainer(ToyModel(), interrupted, **keys).train()
    for name in ("model_final.pth", "last_checkpoint", "metrics.json"):
        os.remove(interrupted / name)
    trainer = make_trainer(ToyModel(), interrupted, **keys)
    assert trainer.resume() and trainer.start_iter == 6
    trainer.train()
    whole, resumed = train_records(tmp_path / "whole"), train_records(interrupted)
    assert [r["iteration"] for r in resumed] == [4, 8]
    assert resumed[1]["loss"] == pytest.approx(whole[1]["loss"], rel=1e-5)


class NoisyModel(ToyModel):
    """Draws from the process's random states in every step (torch, numpy and Python's), as dropout or
    a user's augmentation inside the model would."""

    def forward(self, batch):
        losses = super().forward(batch)
        noise = torch.rand(()) + float(np.random.default_rng(np.random.randint(2**31)).random()) + random.random()
        return {"loss": losses["loss"] * (1 + 0.1 * noise)}


def test_a_model_that_draws_random_numbers_resumes_as_if_never_stopped(tmp_path):
    """The checkpoint keeps the process's random states and the resumed run restores them."""
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    make_trainer(NoisyModel(), tmp_path / "whole", batches_by_iteration, checkpoint_period=3).train()

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    make_trainer(NoisyModel(), tmp_path / "stopped", batches_by_iteration, checkpoint_period=3, max_iter=3).train()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # another process, other states
    resumed = make_trainer(NoisyModel(), tmp_path / "stopped", batches_by_iteration, checkpoint_period=3)
    assert resumed.resume() and resumed.start_iter == 3
    resumed.train()
    whole = load_checkpoint(str(tmp_path / "whole" / "model_final.pth"))["model"]
    again = load_checkpoint(str(tmp_path / "stopped" / "model_final.pth"))["model"]
    for name, tensor in whole.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=0, msg=name)
