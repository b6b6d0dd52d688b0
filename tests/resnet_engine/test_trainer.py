"""The training loop's guards on a toy model: signals, checkpoint rotation, non-finite losses,
a dead data worker and GPU out-of-memory, each with the message a user sees; the training metrics a
model reports, logged and followed by the metric warm-up."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.errors import UserError
from resnet_engine.run_dir import RunDirectory
from resnet_engine.schema import MetricWarmupConfig
from resnet_engine.trainer import LossesAndMetrics, StoppedBySignal, TrainingError
from tests.conftest import ROOT
from tests.resnet_engine.toy_training import ToyModel, make_trainer, toy_batches


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    def send_sigterm(call):
        if call == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedBySignal) as stopped:
        make_trainer(ToyModel(send_sigterm), tmp_path).train()
    assert signal.getsignal(signal.SIGTERM) is handler_before, "the trainer must restore the handler"
    assert re.fullmatch(r"stopped by SIGTERM at iteration 3; checkpoint saved to .*model_0000003\.pth; "
                        r"continue with --resume", str(stopped.value))
    assert load_checkpoint(str(tmp_path / "model_0000003.pth"))["iteration"] == 3
    assert stopped.value.exit_code == 128 + signal.SIGTERM  # a stop, not a success, for job schedulers
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [2, 3], "the record of the stopping iteration must be logged"

    trainer = make_trainer(ToyModel(), tmp_path)
    assert trainer.resume() and trainer.start_iter == 3
    trainer.train()
    assert load_checkpoint(str(tmp_path / "model_final.pth"))["iteration"] == 6


def test_a_stop_sent_to_the_whole_process_group_saves_a_checkpoint(tmp_path):
    """SLURM's scancel and a terminal's Ctrl-C signal every process of the job, the data-loading workers
    too: workers that died of it ended the run as "a data-loading worker died", without a checkpoint."""
    process = subprocess.Popen([sys.executable, "-m", "tests.resnet_engine.stop_signal_training", str(tmp_path)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        log = tmp_path / "metrics.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 3) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    # The workers' deaths come at the end of an iteration, whose update is whole; or the main process
    # stopped at an iteration's end before it noticed them.
    stopped = re.search(r"stopped by SIGTERM at iteration (\d+)(, with the data-loading workers)?; checkpoint saved "
                        r"to .*model_(\d+)\.pth; continue with --resume", stderr)
    assert stopped and int(stopped.group(1)) == int(stopped.group(3)) >= 3, stderr[-2000:]
    assert "a data-loading worker died" not in stderr
    state = load_checkpoint(str(tmp_path / f"model_{stopped.group(3)}.pth"))
    assert state["iteration"] == int(stopped.group(1)) == state["scheduler"]["last_epoch"]


def test_a_stop_during_a_distributed_evaluation_ends_every_process_without_a_mismatched_collective(tmp_path):
    """SIGTERM to both processes while rank 0 waits in the evaluation's gather and rank 1 still scores:
    rank 1 left the evaluation and saved, a collective that paired with rank 0's gather (gloo aborted
    rank 0, rank 1 died unpickling its bytes; NCCL would hang). Each now stops with one line."""
    from tests.resnet_engine.test_distributed import free_port

    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2"}
    processes = [subprocess.Popen([sys.executable, "-m", "tests.resnet_engine.evaluation_stop_training", str(rank),
                                   str(tmp_path / "run"), str(markers)], cwd=ROOT, env={**env, "RANK": str(rank)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not all((markers / f"in_eval{rank}").exists() for rank in (0, 1)) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes), [p.communicate()[1][-2000:] for p in processes]
            time.sleep(0.1)
        time.sleep(1.0)  # rank 0 is in the gather now
        for process in processes:
            process.send_signal(signal.SIGTERM)
        errors = [process.communicate(timeout=60)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, stderr in zip(processes, errors):
        assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
        assert re.search(r"stopped by SIGTERM during the evaluation at iteration 2; no checkpoint saved at this "
                         r"iteration: continue with --resume from the last one", stderr), stderr[-2000:]
        assert "Traceback" not in stderr


def test_keeps_the_last_n_periodic_checkpoints_and_the_best(tmp_path):
    scores = iter([1.0, 5.0, 2.0, 3.0, 0.5, 4.0])  # the best is after iteration 2

    def evaluate(model):
        return {"m": {"score": next(scores)}}

    make_trainer(ToyModel(), tmp_path, evaluate=evaluate, checkpoint_period=1, keep_last=2).train()
    names = sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth"))
    assert names == ["model_0000004.pth", "model_0000005.pth", "model_best.pth", "model_final.pth"]
    assert load_checkpoint(str(tmp_path / "model_best.pth"))["iteration"] == 2


def test_nonfinite_loss_stops_with_the_iteration_and_terms(tmp_path):
    trainer = make_trainer(ToyModel(), tmp_path, checkpoint_period=2,
                           make_loader=lambda start: toy_batches(start, nan_at=(3,)))
    with pytest.raises(TrainingError) as error:
        trainer.train()
    assert str(error.value) == (
        f"non-finite loss at iteration 4 (loss=nan); the last good checkpoint is {tmp_path / 'model_0000002.pth'}: "
        "lower solver.base_lr or raise solver.warmup_iters, then continue from it with --resume, or allow "
        "skipped steps with solver.max_nonfinite")


def test_tolerated_nonfinite_steps_are_skipped(tmp_path):
    model = ToyModel()
    weights = {}

    def remember(call):
        weights[call] = model.linear.weight.detach().clone()

    model.on_forward = remember
    make_trainer(model, tmp_path, max_nonfinite=1, make_loader=lambda start: toy_batches(start, nan_at=(3,))).train()
    assert torch.equal(weights[3], weights[4]), "the non-finite step must not change the weights"
    assert not torch.equal(weights[2], weights[3])
    final = load_checkpoint(str(tmp_path / "model_final.pth"))["model"]
    assert all(torch.isfinite(v).all() for v in final.values())


class DiesInWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, index):
        if index == 2 and torch.utils.data.get_worker_info() is not None:
            os._exit(3)  # as a worker killed by the out-of-memory killer would vanish
        return {"x": torch.ones(2)}


# PyTorch's loader iterator complains again while it shuts down the dead worker's queues.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("attempt", range(3))  # the worker's death races the main process: try a few times
def test_a_dead_data_worker_is_a_clear_error(tmp_path, attempt):
    def make_loader(start):
        return torch.utils.data.DataLoader(DiesInWorker(), batch_size=1, num_workers=1, collate_fn=list, timeout=60)

    with pytest.raises(TrainingError, match=r"a data-loading worker died at iteration \d \((DataLoader worker|ConnectionResetError|EOFError).*\); "
                                            r"run with data.num_workers=0 to see the error in the main process"):
        make_trainer(ToyModel(), tmp_path, make_loader=make_loader).train()
    time.sleep(0.5)  # a late SIGCHLD from the dead worker must not raise anything now


class HangsInWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, index):
        time.sleep(3)  # a hung decoder, stalled storage
        return {"x": torch.ones(2)}


def test_a_worker_past_the_loader_timeout_is_a_clear_error(tmp_path):
    def make_loader(start):
        return torch.utils.data.DataLoader(HangsInWorker(), batch_size=1, num_workers=1, collate_fn=list, timeout=1)

    with pytest.raises(TrainingError) as error:
        make_trainer(ToyModel(), tmp_path, make_loader=make_loader).train()
    assert str(error.value) == ("a data-loading worker gave no batch in time at iteration 1 (DataLoader timed out "
                                "after 1 seconds); run with data.num_workers=0 to see the error in the main process")


def test_out_of_memory_names_the_batch_key(tmp_path):
    def out_of_memory(call):
        if call == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingError) as error:
        make_trainer(ToyModel(out_of_memory), tmp_path).train()
    assert str(error.value) == ("out of GPU memory at iteration 2: lower solver.ims_per_batch (now 4) or "
                                "input.max_size_train, or set solver.amp=bf16")


def test_a_fresh_run_keeps_the_earlier_log_apart(tmp_path):
    """Two runs from scratch in one folder: the second's metrics.jsonl holds only its own records,
    the first's is kept as metrics.1.jsonl; a resumed run appends to its own log."""
    import json

    def iterations(name):
        return [json.loads(line)["iteration"] for line in (tmp_path / name).read_text().splitlines()]

    make_trainer(ToyModel(), tmp_path).train()
    first = iterations("metrics.jsonl")
    RunDirectory(str(tmp_path)).refuse_earlier_run(overwrite=True)  # what --overwrite does
    make_trainer(ToyModel(), tmp_path, checkpoint_period=3).train()
    assert iterations("metrics.1.jsonl") == first
    assert iterations("metrics.jsonl") == first  # the same schedule again, not appended twice
    trainer = make_trainer(ToyModel(), tmp_path, max_iter=8)
    assert trainer.resume() and trainer.start_iter == 6
    trainer.train()
    assert iterations("metrics.jsonl")[: len(first)] == first and max(iterations("metrics.jsonl")) > 6
    assert not (tmp_path / "metrics.2.jsonl").exists()


def evaluate_until_signalled(signum, events):
    """An evaluation that would take a minute; it sends itself ``signum`` once it has started."""

    def evaluate(model):
        events.append("evaluating")
        os.kill(os.getpid(), signum)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        events.append("finished")
        return {"m": {"score": 1.0}}

    return evaluate


def test_a_signal_stops_an_evaluation_at_once(tmp_path):
    events = []
    trainer = make_trainer(ToyModel(), tmp_path, evaluate=evaluate_until_signalled(signal.SIGTERM, events))
    trainer.eval_period = 2
    start = time.monotonic()
    with pytest.raises(StoppedBySignal) as stopped:
        trainer.train()
    assert time.monotonic() - start < 20 and events == ["evaluating"]
    assert str(stopped.value) == (f"stopped by SIGTERM during the evaluation at iteration 2; checkpoint saved to "
                                  f"{tmp_path / 'model_0000002.pth'}; continue with --resume")
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(str(tmp_path / "model_0000002.pth"))["iteration"] == 2
    assert trainer.model.training, "the model is back in train mode"


def test_a_signal_during_the_final_evaluation_keeps_model_final(tmp_path):
    events = []
    trainer = make_trainer(ToyModel(), tmp_path, evaluate=evaluate_until_signalled(signal.SIGINT, events))
    trainer.eval_period = 100  # only the final evaluation
    with pytest.raises(StoppedBySignal) as stopped:
        trainer.train()
    assert str(stopped.value) == (f"stopped by SIGINT during the final evaluation; {tmp_path / 'model_final.pth'} "
                                  f"is saved: --resume runs the evaluation again")
    assert stopped.value.exit_code == 128 + signal.SIGINT
    again = make_trainer(ToyModel(), tmp_path, evaluate=lambda model: {"m": {"score": 2.0}})
    assert again.resume() and again.start_iter == 6
    assert again.train() == {"m": {"score": 2.0}}


STOPPED_DURING_EVALUATION = """
import os, signal, sys, time
from resnet_engine.cli import run_cli
from tests.resnet_engine.toy_training import ToyModel, make_trainer

def evaluate(model):
    print("evaluating", flush=True)
    time.sleep(120)
    return {}

def main():
    trainer = make_trainer(ToyModel(), sys.argv[1], evaluate=evaluate)
    trainer.eval_period = 2
    trainer.train()
    return 0

run_cli(main)
"""


def test_a_command_stopped_during_evaluation_exits_promptly_and_non_zero(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", STOPPED_DURING_EVALUATION, str(tmp_path)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "evaluating"
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - start < 30
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == (f"error: stopped by SIGTERM during the evaluation at iteration 2; "
                                               f"checkpoint saved to {tmp_path / 'model_0000002.pth'}; continue "
                                               f"with --resume")


# --------------------------------------------------------------------------------------------- training metrics


class ReportsAScore(ToyModel):
    """The toy regression, reporting a scripted training metric "score" beside its loss."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, batch):
        losses = super().forward(batch)
        return LossesAndMetrics(losses, {"score": torch.tensor(float(self.scores[self.calls - 1]))})


def logged_records(folder, kind="train"):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if record["type"] == kind]


def test_the_metric_warmup_switches_after_the_first_window_below_and_the_log_shows_each_iterations_lr(tmp_path,
                                                                                                      caplog):
    """Windows of 2 over the scores 9, 9, 6, 3, ...: means 9, 7.5, 4.5: the third is below 5, so iterations
    0-3 train at 0.5 x 0.1 and the rest at 0.5. Each record holds its iteration's score and learning rate."""
    scores = [9, 9, 6, 3, 9, 9, 9, 9]
    until = MetricWarmupConfig(metric="score", below=5, lr_factor=0.1, window=2)
    with caplog.at_level("INFO", logger="resnet_engine.trainer"):
        make_trainer(ReportsAScore(scores), tmp_path, max_iter=8, log_period=1, base_lr=0.5,
                     warmup_until=until).train()
    # Numbered as the records are: the scores of records 3 and 4, and record 5 the first at the full rate.
    assert ("score averaged 4.5 over iterations 3-4, below 5: the warm-up ends, the schedule's learning rate "
            "applies from iteration 5") in caplog.messages
    records = logged_records(tmp_path)
    assert [r["iteration"] for r in records] == list(range(1, 9))
    assert [r["score"] for r in records] == scores
    assert [r["lr"] for r in records] == pytest.approx([0.05] * 4 + [0.5] * 4, rel=1e-12)
    assert load_checkpoint(str(tmp_path / "model_final.pth"))["scheduler"]["metric_warmup"] == {
        "recent": [6.0, 3.0], "ended_at": 4}
    assert json.loads((tmp_path / "metrics.json").read_text())["metric_warmup"] == {
        "metric": "score", "below": 5, "lr_factor": 0.1, "full_lr_from_iteration": 5}


def test_logged_metrics_are_averaged_over_the_logging_window(tmp_path):
    make_trainer(ReportsAScore([1, 2, 3, 4, 5, 6]), tmp_path, max_iter=6, log_period=4).train()
    assert [(r["iteration"], r["score"]) for r in logged_records(tmp_path)] == [(4, 2.5), (6, 5.5)]


def test_a_warmup_metric_the_model_does_not_report_is_one_line(tmp_path):
    until = MetricWarmupConfig(metric="train_error", below=80)
    with pytest.raises(TrainingError) as error:
        make_trainer(ReportsAScore([1] * 6), tmp_path, warmup_until=until).train()
    assert str(error.value) == ("solver.warmup_until.metric=train_error: the model reports no such training metric "
                                "(it reports: score); name one of them, or leave the key empty")


def test_a_run_that_never_leaves_the_warmup_warns(tmp_path):
    until = MetricWarmupConfig(metric="score", below=5, lr_factor=0.1, window=3)
    with pytest.warns(UserWarning) as caught:
        make_trainer(ReportsAScore([9, 9, 9, 9, 6, 6]), tmp_path, warmup_until=until).train()
    assert [str(w.message) for w in caught] == [
        "the whole run trained in the warm-up at 0.1 x the learning rate: score averaged 7 over the last 3 "
        "iterations, never below solver.warmup_until.below=5"]
    assert json.loads((tmp_path / "metrics.json").read_text())["metric_warmup"]["full_lr_from_iteration"] is None


# --------------------------------------------------------------------------------------------- resumes and records


def evaluation_iterations(out) -> list[int]:
    return [r["iteration"] for r in logged_records(out, kind="eval")]


def test_an_evaluation_stopped_by_a_signal_is_made_first_on_resume(tmp_path):
    """Stopped during the evaluation at iteration 4: the resumed run evaluates iteration 4 before training on
    (before, the record of 4 was missing for good, and its weights never a candidate for model_best.pth)."""
    calls = []

    def stopped_at_second(model):
        calls.append(len(calls))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        return {"m": {"score": 1.0}}

    trainer = make_trainer(ToyModel(), tmp_path, evaluate=stopped_at_second, max_iter=8)
    trainer.eval_period = 2
    with pytest.raises(StoppedBySignal):
        trainer.train()
    resumed = make_trainer(ToyModel(), tmp_path, evaluate=lambda model: {"m": {"score": 5.0}}, max_iter=8)
    resumed.eval_period = 2
    assert resumed.resume() and resumed.start_iter == 4
    resumed.train()
    assert evaluation_iterations(tmp_path) == [2, 4, 6, 8]
    # A run resumed at an evaluated iteration does not evaluate it twice.
    again = make_trainer(ToyModel(), tmp_path, evaluate=lambda model: {"m": {"score": 5.0}}, max_iter=10,
                         checkpoint_period=2)
    again.eval_period = 2
    assert again.resume() and again.start_iter == 8
    again.train()
    assert evaluation_iterations(tmp_path) == [2, 4, 6, 8, 10]


def test_a_finished_run_resumed_evaluates_once_more_and_keeps_one_record(tmp_path):
    scores = iter([1.0, 2.0])
    for resume in (False, True):
        trainer = make_trainer(ToyModel(), tmp_path, evaluate=lambda model: {"m": {"score": next(scores)}})
        trainer.eval_period = 100
        assert trainer.resume() == resume
        trainer.train()
    assert [(r["iteration"], r["m"]["score"]) for r in logged_records(tmp_path, kind="eval")] == [(6, 2.0)]


def test_a_checkpoint_past_max_iter_is_refused(tmp_path):
    """Resumed with a max_iter below the checkpoint's iteration, the run would write model_final.pth
    labelled iteration 4 with the weights, schedule and data position of iteration 6."""
    make_trainer(ToyModel(), tmp_path, max_iter=8, checkpoint_period=6).train()
    (tmp_path / "last_checkpoint").write_text("model_0000006.pth")
    trainer = make_trainer(ToyModel(), tmp_path, max_iter=4)
    with pytest.raises(UserError) as error:
        trainer.resume()
    assert str(error.value) == (f"{tmp_path / 'model_0000006.pth'} is at iteration 6, past solver.max_iter=4: "
                                f"raise solver.max_iter to continue the run, or start afresh (--overwrite)")


def test_time_per_iteration_leaves_out_evaluations(tmp_path):
    """A 1 s evaluation after iteration 4 of steps that take milliseconds: it counted in the next record's
    time_per_iter (0.5 s an iteration at log_period 2)."""
    def slow(model):
        time.sleep(1.0)
        return {"m": {"score": 1.0}}

    trainer = make_trainer(ToyModel(), tmp_path, evaluate=slow, max_iter=8, log_period=2)
    trainer.eval_period = 4
    trainer.train()
    times = {r["iteration"]: r["time_per_iter"] for r in logged_records(tmp_path)}
    assert sorted(times) == [2, 4, 6, 8] and max(times.values()) < 0.2


def test_a_window_of_skipped_steps_reports_no_loss(tmp_path):
    """Both steps of the window 3-4 non-finite and skipped: the record had total_loss 0, a perfect loss."""
    make_trainer(ToyModel(), tmp_path, max_nonfinite=5, make_loader=lambda start: toy_batches(start, nan_at=(2, 3))
                 ).train()
    records = {r["iteration"]: r for r in logged_records(tmp_path)}
    assert "total_loss" not in records[4] and "loss" not in records[4]
    assert records[2]["total_loss"] > 0 and records[6]["total_loss"] > 0


def test_a_best_checkpoint_rewritten_after_it_was_found_good_is_good_no_more(tmp_path):
    """model_best.pth was the last good checkpoint, then rewritten with the weights of iteration 4, which give
    a non-finite loss: naming it as the one to resume from would repeat the failure."""
    scores = iter(range(1, 100))
    trainer = make_trainer(ToyModel(), tmp_path, evaluate=lambda model: {"m": {"score": float(next(scores))}},
                           max_iter=8, make_loader=lambda start: toy_batches(start, nan_at=(4,)))
    trainer.eval_period = 2
    with pytest.raises(TrainingError) as error:
        trainer.train()
    assert "no checkpoint of this run is good to continue from" in str(error.value)
    assert "model_best.pth.diverged" in str(error.value)


def nonfinite_rank(rank: int, out_dir: str, store: str) -> None:
    """One of two gloo processes training until a non-finite loss at iteration 6; writes what it was told."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    trainer = make_trainer(ToyModel(), out_dir, max_iter=8, checkpoint_period=2, ims_per_batch=8,
                           make_loader=lambda start: toy_batches(start, nan_at=(5,)))
    try:
        trainer.train()
    except TrainingError as error:
        (Path(out_dir) / f"rank{rank}.txt").write_text(str(error))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_every_process_gives_the_main_processs_advice_on_a_nonfinite_loss(tmp_path):
    """The other processes keep no checkpoints: they said "no checkpoint is good ... start afresh
    (--overwrite)", which would delete the good checkpoint the main process named."""
    torch.multiprocessing.spawn(nonfinite_rank, args=(str(tmp_path), str(tmp_path / "store")), nprocs=2)
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"non-finite loss at iteration 6 (loss=nan); the last good checkpoint is "
                                  f"{tmp_path / 'model_0000004.pth'}")


def test_skipped_steps_count_against_max_nonfinite_across_a_resume(tmp_path):
    """solver.max_nonfinite=1 and non-finite losses at iterations 2 and 5: the uninterrupted run stops
    at the second; a run resumed between them stopped there too only if the count survived the resume."""
    nan_at = (1, 4)  # the loader's 0-based positions: iterations 2 and 5
    with pytest.raises(TrainingError, match="non-finite loss at iteration 5"):
        make_trainer(ToyModel(), tmp_path / "whole", max_iter=6, max_nonfinite=1,
                     make_loader=lambda start: toy_batches(start, nan_at=nan_at)).train()
    make_trainer(ToyModel(), tmp_path / "split", max_iter=3, max_nonfinite=1,
                 make_loader=lambda start: toy_batches(start, nan_at=nan_at)).train()
    resumed = make_trainer(ToyModel(), tmp_path / "split", max_iter=6, max_nonfinite=1,
                           make_loader=lambda start: toy_batches(start, nan_at=nan_at))
    assert resumed.resume() and resumed.nonfinite_steps == 1
    with pytest.raises(TrainingError, match="non-finite loss at iteration 5"):
        resumed.train()


def test_the_skipped_images_reported_at_the_end_are_those_of_every_process(tmp_path, monkeypatch, caplog):
    """Each process skips the unreadable images of its own share: the count was the main process's."""
    from resnet_engine import trainer as trainer_module

    def batches_with_a_bad_image(start):
        for batch in toy_batches(start):
            batch[0]["skipped"] = ["images/main_0.jpg"]
            yield batch

    other_process = {"images/rank1_0.jpg", "images/rank1_1.jpg"}
    monkeypatch.setattr(trainer_module.dist_utils, "all_gather_objects",  # a second process for the skipped sets
                        lambda own: [own, other_process] if isinstance(own, set) else [own])
    with caplog.at_level("WARNING", logger=trainer_module.__name__):
        make_trainer(ToyModel(), tmp_path, make_loader=batches_with_a_bad_image).train()
    assert caplog.messages[-1] == "3 unreadable images were skipped during training, e.g. images/main_0.jpg"
