"""The training loop shared by every trainer, readable top to bottom.

    for iteration in range(start, max_iter):
        batch = next(data)
        losses = model(batch)                  # under autocast when solver.amp is on
        check the losses are finite            # skip or stop, the same on every process
        backward, (clip), step
        metric warm-up, scheduler step         # solver.warmup_until follows a training metric
        log / checkpoint / evaluate on their periods
        stop cleanly on SIGTERM or SIGINT      # after saving a checkpoint, also during an evaluation

It knows nothing about detection: the model returns a dict of losses (or :class:`LossesAndMetrics`:
its losses and training metrics that are logged but not trained on, such as a classifier's error on
its training batch), ``evaluate(model)`` returns a dict of metrics, and ``make_loader(start_iter)``
returns the batches from a given step on.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from . import distributed as dist_utils
from .checkpoint import (
    BEST_NAME,
    FINAL_NAME,
    Checkpointer,
    CheckpointError,
    GoodCheckpoints,
    capture_rng_state,
    restore_rng_state,
)
from .errors import UserError
from .files import write_json, write_text
from .logger import MetricsLogger, progress_bar
from .resume import (
    changed_keys,
    check_fixed_keys_kept,
    check_model_fits,
    check_optimizer_fits,
    elastic_restart_count,
    load_optimizer_state,
    load_scheduler_state,
    world_size_change_note,
)
from .run_dir import claim_run_directory, release_run_directory
from .schema import LoggingConfig, check_solver_options, steps_beyond_the_run

logger = logging.getLogger(__name__)

# What a checkpoint holds besides the weights, without which a run cannot continue as it would have.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "iteration", "rng")


class TrainingError(UserError):
    exit_code = 1


class LossesAndMetrics(NamedTuple):
    """What a model may return in training instead of its losses alone: the losses (summed and trained
    on) and metrics of the batch (logged in metrics.jsonl and followed by solver.warmup_until, never
    trained on)."""

    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor]


@dataclass
class LogWindow:
    """The sums of the losses and metrics of the iterations since the last record of metrics.jsonl, and how
    many iterations they cover. A checkpoint keeps it, so that the first record after a resume averages over
    its whole log period as an uninterrupted run's does (not only over the iterations since the resume)."""

    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, losses: dict, metrics: dict) -> None:
        for name, value in losses.items():
            self.losses[name] = self.losses.get(name, 0.0) + float(value.detach())
        for name, value in metrics.items():
            self.metrics[name] = self.metrics.get(name, 0.0) + float(value)
        self.count += 1

    @classmethod
    def from_state(cls, state: dict | None) -> LogWindow:
        """A checkpoint's window; none (a checkpoint written before windows were kept): an empty one."""
        state = state or {}
        return cls(dict(state.get("losses", {})), dict(state.get("metrics", {})), int(state.get("count", 0)))

    @classmethod
    def mean_of(cls, states: list[dict | None]) -> LogWindow:
        """The windows of another number of processes as one: their mean sums (the record averages the
        processes' means, so each new process starting from this mean gives the same record)."""
        windows = [cls.from_state(state) for state in states]

        def mean(part: str) -> dict[str, float]:
            names = set().union(*(getattr(w, part) for w in windows))
            return {n: sum(getattr(w, part).get(n, 0.0) for w in windows) / len(windows) for n in sorted(names)}

        return cls(mean("losses"), mean("metrics"), max(w.count for w in windows))


class DataWorkerDied(TrainingError):
    """A data-loading worker process died (killed for memory, crashed in native code, ...)."""


def mute_worker_signal():
    """Default SIGCHLD handling for a while; returns the handler to restore (None: nothing changed)."""
    if not hasattr(signal, "SIGCHLD"):
        return None
    try:
        return signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread
        return None


def restore_worker_signal(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGCHLD, previous)


def defer_worker_deaths(defer: bool) -> None:
    """Hold SIGCHLD back (True) or let it through (False). PyTorch reports a dead data-loading worker by
    raising from its SIGCHLD handler wherever the main process is, an optimizer step half done included.
    Held back while an iteration updates the model, the report comes at the iteration's end, where the
    weights, the optimizer and the schedule agree on the iteration count (a checkpoint can be saved)."""
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "SIGCHLD") and \
            threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK if defer else signal.SIG_UNBLOCK, {signal.SIGCHLD})


class Trainer:
    """Runs one training job in its output folder (claimed for the run: see resnet_engine/run_dir.py).

    Args:
        model: returns a dict of scalar losses for a batch in train mode, or a :class:`LossesAndMetrics`.
        scheduler: steps once per iteration; a :class:`resnet_engine.optim.StepSchedule` also takes the
            training metric its ``metric_warmup`` follows.
        make_loader: start_iteration -> iterable of batches (resumes the sampler).
        evaluate: model -> nested metrics dict (run on every process; only the main one's result is kept).
        primary_metric: "section/name" in the metrics that selects model_best.pth (higher is better).
        meta: saved in checkpoints (class names, category ids, ...), for inference.
        config_text: the resolved config, saved in checkpoints (and logged once by the trackers).
        logging_cfg: the config's ``logging`` section: TensorBoard and the trackers the records go to.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, solver, output_dir: str,
                 make_loader: Callable[[int], object], device: torch.device,
                 evaluate: Callable[[nn.Module], dict] | None = None, eval_period: int = 0,
                 primary_metric: str | None = None, meta: dict | None = None, config_text: str = "",
                 logging_cfg: LoggingConfig | None = None, fixed_on_resume: dict[str, str] | None = None):
        """``fixed_on_resume``: config keys that a resumed run may not change, each with the reason (the
        other changes are applied with a warning)."""
        self.model = model
        self.fixed_on_resume = fixed_on_resume or {}
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.solver = solver
        self.output_dir = output_dir
        self.make_loader = make_loader
        self.device = device
        self.evaluate_fn = evaluate
        self.eval_period = eval_period
        self.primary_metric = primary_metric
        self.meta = meta or {}
        self.config_text = config_text
        self.is_main = dist_utils.is_main_process()
        if self.is_main:
            claim_run_directory(output_dir)  # the claim setup_run took, or a new one
        self.checkpointer = Checkpointer(output_dir, solver.keep_last, enabled=self.is_main)
        self.good_checkpoints = GoodCheckpoints()
        self.metrics_logger = MetricsLogger(output_dir, enabled=self.is_main, options=logging_cfg,
                                            config_text=config_text)
        check_solver_options(solver)
        late_steps = steps_beyond_the_run(solver)
        if late_steps and self.is_main:
            logger.warning(late_steps)
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[solver.amp]
        if solver.amp == "fp16" and device.type != "cuda":
            raise UserError("solver.amp=fp16 needs a CUDA device: use solver.amp=bf16 on the CPU, or off")
        self.scaler = torch.amp.GradScaler("cuda", enabled=solver.amp == "fp16")
        self.start_iter = 0
        self.iteration = 0
        self.best_metric = -math.inf
        self.nonfinite_steps = 0
        self.train_seconds = 0.0  # wall time in the loop itself, without evaluation and checkpoints
        self.log_window = LogWindow()
        self.skipped_files: set[str] = set()
        self._stop_signal: int | None = None
        self._evaluating = False
        self._saved_at: int | None = None  # the iteration of the newest checkpoint of this run
        self._resume_tried = False
        self.ddp_model = model

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "world_size": dist_utils.get_world_size(),
            "best_metric": self.best_metric,
            "train_seconds": self.train_seconds,
            # Skipped steps count against solver.max_nonfinite over the whole run, resumes included.
            "nonfinite_steps": self.nonfinite_steps,
            # Every process has its own RNG stream: keep them all (a collective call).
            "rng": dist_utils.all_gather_objects(capture_rng_state()),
            # So is every process's log window (each sums its own batches until the record averages them).
            "log_window": dist_utils.all_gather_objects(asdict(self.log_window)),
            "meta": self.meta,
            "config": self.config_text,
        }

    def save(self, name: str | None = None) -> str | None:
        """Write a checkpoint of the current iteration (periodic when no name is given)."""
        state = self.state_dict()
        self.checkpointer.protected = self.good_checkpoints.last_good  # rotation keeps it
        if name is None:
            path = self.checkpointer.save_periodic(self.iteration, state)
        else:
            path = self.checkpointer.save(name, state)
        self.good_checkpoints.saved(path, state["model"])
        self._saved_at = self.iteration
        return path

    def resume(self) -> bool:
        """Continue from the newest readable checkpoint of output_dir, falling back through every
        full trainer state (periodic, final, best); False when there is none."""
        self._resume_tried = True
        # The main process reads (other machines may not see its disk) and shares the state, or
        # the error, so that every process stops alike.
        found = dist_utils.on_main_process(self.checkpointer.load_latest)
        if found is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            self._write_config()
            return False
        state, path, unreadable = found
        for bad, reason in unreadable:
            kept = self.checkpointer.set_aside(bad, "damaged")
            warnings.warn(f"{reason}; falling back to {os.path.basename(path)} (the file is kept as {kept})",
                          stacklevel=2)
        self._load(state, path)
        self.good_checkpoints.pending.append(path)  # good once its weights give a finite loss again
        if self.start_iter > self.solver.max_iter:
            # Training would not run, and model_final.pth would be labelled max_iter with the weights,
            # schedule and data position of the later iteration: a further resume would shift all three.
            raise UserError(f"{path} is at iteration {self.start_iter}, past solver.max_iter={self.solver.max_iter}: "
                            f"raise solver.max_iter to continue the run, or start afresh (--overwrite)")
        self._write_config()  # only now: a config that does not fit leaves the run's own config.yaml
        # A run resumed at max_iter evaluates again (its final evaluation may have been stopped): its
        # earlier record of that evaluation, if any, is replaced rather than repeated.
        self.metrics_logger.resume_after(self.start_iter, drop_evaluation=self.start_iter == self.solver.max_iter)
        logger.info("resumed from %s at iteration %d", path, self.start_iter)
        return True

    def _write_config(self) -> None:
        if self.is_main and self.config_text:
            write_text(os.path.join(self.output_dir, "config.yaml"), self.config_text)

    def _load(self, state: dict, path: str) -> None:
        missing = [key for key in TRAINING_STATE_KEYS if key not in state]
        if missing:  # a converted or released file copied into output_dir: PyTorch's KeyError otherwise
            raise CheckpointError(f"{path} holds weights, not a training state (no {', '.join(missing)}): it cannot "
                                  f"be resumed; move it out of {self.output_dir}, and start a run from these weights "
                                  f"in another output_dir")
        saved_config = state.get("config", "")
        check_model_fits(self.model, state["model"], path, changed_keys(saved_config, self.config_text, "model"))
        check_optimizer_fits(self.optimizer, state["optimizer"], path,
                             changed_keys(saved_config, self.config_text, "solver"))
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        load_scheduler_state(self.scheduler, self.optimizer, state["scheduler"])
        if "scaler" in state and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.start_iter = self.iteration = int(state["iteration"])
        self.best_metric = float(state.get("best_metric", -math.inf))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        rng_states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        # A process added since the checkpoint continues the random stream of the last saved one.
        restore_rng_state(rng_states[min(dist_utils.get_rank(), len(rng_states) - 1)])
        windows = state.get("log_window") or [None]
        saved_world, world = int(state.get("world_size", len(rng_states))), dist_utils.get_world_size()
        if saved_world == world:
            self.log_window = LogWindow.from_state(windows[min(dist_utils.get_rank(), len(windows) - 1)])
        else:
            self.log_window = LogWindow.mean_of(windows)
            if self.is_main:
                logger.info(world_size_change_note(saved_world, world, self.solver.ims_per_batch, self.start_iter))
        changes = changed_keys(saved_config, self.config_text)
        check_fixed_keys_kept(changes, self.fixed_on_resume, path)
        if changes and self.is_main:
            logger.warning("resuming with settings that differ from the checkpoint's (the current ones apply): %s",
                           ", ".join(changes))

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict:
        try:
            self._continue_after_elastic_restart()
            return self._train()
        finally:
            if self.is_main:
                release_run_directory(self.output_dir)

    def _continue_after_elastic_restart(self) -> None:
        """Workers that torchrun started again after one of them died continue from the last checkpoint
        (without it they would start from scratch, and be refused by the earlier attempt's checkpoints)."""
        restarts = elastic_restart_count()
        if restarts == 0 or self._resume_tried:
            return
        if self.is_main:
            logger.info("torchrun restarted the workers (restart %d): continuing from the last checkpoint in %s",
                        restarts, self.output_dir)
        self.resume()

    def _train(self) -> dict:
        solver = self.solver
        if self.start_iter == 0:
            if self.is_main:
                claim_run_directory(self.output_dir).refuse_earlier_run()
            self.metrics_logger.start_fresh()
        self._wrap_distributed()
        self.model.train()
        loader = self.make_loader(self.start_iter)
        data = iter(loader)
        bar = progress_bar(solver.max_iter, self.start_iter, self.is_main)
        previous_handlers = self._install_signal_handlers()
        # Seconds per iteration from the training time alone: the evaluations and checkpoint writes
        # between two records are not training (train_time leaves them out too).
        window_seconds, last_log = self.train_seconds, self.start_iter
        final_metrics: dict = {}
        completed = False
        worker_death: TrainingError | None = None
        previous_sigchld = None
        self._completed = self.start_iter  # iterations whose update is whole, for a stop's checkpoint
        try:
            if self._evaluation_missed():
                self.iteration = self.start_iter
                self._evaluate(self.start_iter)
            for iteration in range(self.start_iter, solver.max_iter):
                self.iteration = self._completed = iteration
                tick = time.perf_counter()
                batch = self._next_batch(data)
                defer_worker_deaths(True)
                losses, metrics = self._forward(batch)
                total = sum(losses.values())
                stop, nonfinite = self._agree(self._stop_signal is not None, not bool(torch.isfinite(total)))
                if nonfinite:
                    self._handle_nonfinite(losses)
                else:
                    self.good_checkpoints.loss_seen(float(total.detach()))
                    self._step(total)
                    self._follow_metric_warmup(metrics)
                    self.log_window.add(losses, metrics)
                done = self.iteration + 1
                lr = self.optimizer.param_groups[0]["lr"]  # this iteration's: the log shows what it trained with
                self.scheduler.step()
                self.train_seconds += time.perf_counter() - tick
                bar.update(1)
                if stop or done % solver.log_period == 0 or done == solver.max_iter:
                    # A stop by signal logs its partial window too: no record is lost.
                    seconds_per_iter = (self.train_seconds - window_seconds) / max(done - last_log, 1)
                    self._log(done, self.log_window, seconds_per_iter, lr, bar)
                    self.log_window = LogWindow()
                    window_seconds, last_log = self.train_seconds, done
                self._completed = done
                defer_worker_deaths(False)  # a worker's death during the update is raised here
                if stop:
                    self._save_and_stop(done)
                if solver.checkpoint_period and done % solver.checkpoint_period == 0 and done < solver.max_iter:
                    self.iteration = done
                    self.save()
                if self.eval_period and done % self.eval_period == 0 and done < solver.max_iter:
                    self.iteration = done
                    self._evaluate(done)
            self.iteration = solver.max_iter
            self._warn_if_still_warming_up()
            self.save(FINAL_NAME)
            final_metrics = self._evaluate(solver.max_iter, final=True) if self.evaluate_fn else {}
            self._write_final_metrics({**final_metrics, **self._metric_warmup_record()})
            completed = True
        except RuntimeError as error:
            # PyTorch reports a dead worker from its SIGCHLD handler, wherever the main process is, and a
            # worker that gave no batch within the loader's timeout (a hung decoder, stalled storage).
            if "DataLoader worker" not in str(error) and "DataLoader timed out" not in str(error):
                raise
            previous_sigchld = mute_worker_signal()
            worker_death = self._worker_died(str(error).splitlines()[0])
        except DataWorkerDied as error:
            previous_sigchld = mute_worker_signal()
            worker_death = error
        finally:
            defer_worker_deaths(False)
            bar.close()
            self._restore_signal_handlers(previous_handlers)
            self.metrics_logger.close(finished=completed)
        if worker_death is not None and self._stop_signal is not None:
            # A stop sent to the whole process group (SLURM's scancel, a terminal's Ctrl-C) ends the
            # workers too: the run stops as asked, not as a failure.
            worker_death = self._stop_with_dead_workers()
        if worker_death is not None:
            # Drop every reference to the loader's iterator (the exception's traceback holds its
            # frames too) so that it shuts its workers down now; until then PyTorch's SIGCHLD handler
            # would raise again at some random later point, so it stays muted meanwhile.
            worker_death.__context__ = None
            worker_death.__traceback__ = None
            data = loader = None  # noqa: F841
            restore_worker_signal(previous_sigchld)
            raise worker_death
        self._report_skipped()
        return final_metrics
    # -- pieces of the loop ----------------------------------------------------------------------
    def _evaluation_missed(self) -> bool:
        """Whether the run was stopped (by a signal, before or during it) at a periodic evaluation that
        metrics.jsonl has no record of: the resumed run makes it first, so that no evaluation, and no
        candidate for model_best.pth, is lost. Decided on the main process, which writes the log."""
        start = self.start_iter
        if not (self.evaluate_fn and self.eval_period and 0 < start < self.solver.max_iter
                and start % self.eval_period == 0):
            return False
        missed = not self.metrics_logger.has_record(start, "eval") if self.is_main else None
        return bool(dist_utils.broadcast_object(missed))

    def _wrap_distributed(self) -> None:
        if dist_utils.is_distributed():
            uses_syncbn = any(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules())
            if uses_syncbn and self.device.type != "cuda":
                raise UserError("norm=syncbn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only): use "
                                "model.backbone.norm=bn or gn for distributed training on CPUs")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # BatchNorm statistics stay per process (as in torchvision's and detectron2's recipes);
            # SyncBatchNorm is the switch for synchronized statistics.
            ddp = nn.parallel.DistributedDataParallel
            no_buffer_sync = ({"forward_sync_buffers": False}
                              if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                              else {"broadcast_buffers": False})
            self.ddp_model = ddp(self.model, device_ids=device_ids, **no_buffer_sync)

    def _next_batch(self, data):
        try:
            batch = next(data)
        except (ConnectionError, EOFError) as error:
            # A worker that died while handing over a batch breaks the pipe before PyTorch notices.
            raise self._worker_died(f"{type(error).__name__}: {error}") from None
        # A batch is a list of samples, or one dict of batched tensors (CIFAR's loaders).
        for sample in [batch] if isinstance(batch, dict) else batch:
            self.skipped_files.update(sample.get("skipped", ()))
        return batch

    def _worker_died(self, detail: str) -> DataWorkerDied:
        what = "gave no batch in time" if "timed out" in detail else "died"
        return DataWorkerDied(f"a data-loading worker {what} at iteration {self.iteration + 1} ({detail}); "
                             f"run with data.num_workers=0 to see the error in the main process")

    def _forward(self, batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """(the losses in float32, the training metrics as numbers) of one batch."""
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        try:
            with autocast:
                outputs = self.ddp_model(batch)
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"out of GPU memory at iteration {self.iteration + 1}: lower solver.ims_per_batch "
                f"(now {self.solver.ims_per_batch}) or input.max_size_train, or set solver.amp=bf16"
            ) from None
        losses, metrics = outputs if isinstance(outputs, LossesAndMetrics) else (outputs, {})
        return ({name: value.float() for name, value in losses.items()},
                {name: float(value) for name, value in metrics.items()})

    def _agree(self, stop: bool, nonfinite: bool) -> tuple[bool, bool]:
        """Every process takes the same decision, or collective operations would hang."""
        if not dist_utils.is_distributed():
            return stop, nonfinite
        flags = torch.tensor([float(stop), float(nonfinite)], device=self.device)
        torch.distributed.all_reduce(flags)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _step(self, total: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _follow_metric_warmup(self, metrics: dict[str, float]) -> None:
        """Give the metric warm-up (solver.warmup_until) this iteration's value, averaged over the
        processes so that all of them end it at the same iteration."""
        warmup = getattr(self.scheduler, "metric_warmup", None)
        if warmup is None or not warmup.active:
            return
        if warmup.metric not in metrics:
            reported = ", ".join(sorted(metrics)) or "none"
            raise TrainingError(f"solver.warmup_until.metric={warmup.metric}: the model reports no such training "
                                f"metric (it reports: {reported}); name one of them, or leave the key empty")
        value = dist_utils.reduce_mean({warmup.metric: metrics[warmup.metric]}, self.device)[warmup.metric]
        if warmup.observe(self.iteration, value) and self.is_main:
            logger.info("%s averaged %.4g over iterations %d-%d, below %g: the warm-up ends, the schedule's "
                        "learning rate applies from iteration %d", warmup.metric, warmup.mean(),
                        self.iteration + 2 - warmup.window, self.iteration + 1, warmup.below, warmup.ended_at + 1)

    def _metric_warmup_record(self) -> dict:
        """For metrics.json: the first iteration at the schedule's learning rate, numbered as metrics.jsonl
        numbers its records (from 1), null when the whole run trained in the warm-up; nothing without one."""
        warmup = getattr(self.scheduler, "metric_warmup", None)
        if warmup is None:
            return {}
        full_lr_from = None if warmup.ended_at is None else warmup.ended_at + 1
        return {"metric_warmup": {"metric": warmup.metric, "below": warmup.below, "lr_factor": warmup.lr_factor,
                                  "full_lr_from_iteration": full_lr_from}}

    def _warn_if_still_warming_up(self) -> None:
        warmup = getattr(self.scheduler, "metric_warmup", None)
        if warmup is not None and warmup.active and self.is_main:
            warnings.warn(f"the whole run trained in the warm-up at {warmup.lr_factor:g} x the learning rate: "
                          f"{warmup.metric} averaged {warmup.mean():.4g} over the last {len(warmup.recent)} "
                          f"iterations, never below solver.warmup_until.below={warmup.below:g}", stacklevel=2)

    def _handle_nonfinite(self, losses: dict[str, torch.Tensor]) -> None:
        self.nonfinite_steps += 1
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        if self.nonfinite_steps > self.solver.max_nonfinite:
            # The main process keeps the checkpoints and knows which is good: every process says what it says.
            advice = dist_utils.broadcast_object(self._keep_good_checkpoint() if self.is_main else None)
            raise TrainingError(f"non-finite loss at iteration {self.iteration + 1} ({terms}); {advice}")
        logger.warning("non-finite loss at iteration %d (%s): step skipped (%d of %d allowed)", self.iteration + 1,
                       terms, self.nonfinite_steps, self.solver.max_nonfinite)
        self.optimizer.zero_grad(set_to_none=True)

    def _keep_good_checkpoint(self) -> str:
        """Set aside the checkpoints whose weights led to the non-finite loss, point --resume at the
        last good one, and say what to do."""
        not_good = [path for path in self.good_checkpoints.not_good() if os.path.isfile(path)]  # rotation removed some
        kept = [self.checkpointer.set_aside(path, "diverged") for path in not_good]
        aside = (f" ({len(kept)} later one(s) set aside as *.diverged, e.g. {os.path.basename(kept[-1])})"
                 if kept else "")
        advice = "lower solver.base_lr or raise solver.warmup_iters"
        good = self.good_checkpoints.last_good
        if good is None:
            return (f"no checkpoint of this run is good to continue from{aside}: {advice} and start afresh "
                    f"(--overwrite), or allow skipped steps with solver.max_nonfinite")
        self.checkpointer.point_to(good)
        return (f"the last good checkpoint is {good}{aside}: {advice}, then continue from it with --resume, "
                f"or allow skipped steps with solver.max_nonfinite")

    def _log(self, iteration: int, window: LogWindow, seconds_per_iter: float, lr: float, bar) -> None:
        """One record of metrics.jsonl for the iterations of ``window``, up to ``iteration``: their mean losses
        and metrics, and ``lr``, the learning rate the last of them trained with."""
        count = window.count
        averaged = {k: v / max(count, 1) for k, v in {**window.losses, **window.metrics}.items()}
        averaged = dist_utils.reduce_mean(averaged, self.device)
        loss_total = sum(v for k, v in averaged.items() if k in window.losses)
        # A window whose every step was skipped as non-finite has no loss to report (not a loss of 0).
        loss_record = {"total_loss": round(loss_total, 5)} if window.losses else {}
        record = {
            **{k: round(v, 5) for k, v in averaged.items()},
            **loss_record,
            "lr": lr,
            "time_per_iter": round(seconds_per_iter, 4),
            "train_time": round(self.train_seconds, 1),
        }
        if self.device.type == "cuda":
            record["max_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20)
        if count:
            self.good_checkpoints.typical_loss_seen(loss_total)
        self.metrics_logger.log(iteration, record)
        short = {k.replace("loss_", ""): f"{v:.3f}" for k, v in averaged.items()}
        bar.set_postfix(lr=f"{record['lr']:.2g}", s_it=f"{record['time_per_iter']:.2f}", **short, refresh=False)

    def _evaluate(self, iteration: int, final: bool = False) -> dict:
        if self.evaluate_fn is None:
            return {}
        # Every process scores its share of the images with the BatchNorm statistics of the saved model.
        dist_utils.broadcast_buffers(self.model)
        self.model.eval()
        self._evaluating = True
        try:
            metrics = self.evaluate_fn(self.model)
        except EvaluationInterrupted:
            self._evaluating = False
            self._stop_during_evaluation(iteration, final)
        except Exception:
            if self._stop_signal and dist_utils.is_distributed():
                # Another process left the evaluation for the same stop: this one's collectives fail.
                self._stop_during_evaluation(iteration, final)
            raise
        finally:
            self._evaluating = False
            self.model.train()
        # The same metrics on every process, so that all take part in saving the best model.
        metrics = dist_utils.broadcast_object(metrics)
        if metrics:
            self.metrics_logger.log(iteration, {**metrics, "train_time": round(self.train_seconds, 1)}, kind="eval")
            value = self._primary(metrics)
            if value is not None and value > self.best_metric:
                self.best_metric = value
                self.save(BEST_NAME)
        return metrics

    def _primary(self, metrics: dict) -> float | None:
        if not self.primary_metric:
            return None
        node = metrics
        for part in self.primary_metric.split("/"):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return float(node)

    def _write_final_metrics(self, metrics: dict) -> None:
        if self.is_main:
            write_json(metrics, os.path.join(self.output_dir, "metrics.json"))

    def _report_skipped(self) -> None:
        """The unreadable images of every process (a collective: each skips its own share's)."""
        skipped = set().union(*dist_utils.all_gather_objects(self.skipped_files))
        if skipped and self.is_main:
            logger.warning("%d unreadable images were skipped during training, e.g. %s", len(skipped),
                           sorted(skipped)[0])

    # -- signals ---------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        def request_stop(signum, frame):
            self._stop_signal = signum
            if self._evaluating:  # an evaluation can take minutes: leave it now, not at its end
                self._evaluating = False
                raise EvaluationInterrupted(signum)

        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not in the main thread: leave the defaults
            pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _signal_name(self) -> str:
        return signal.Signals(self._stop_signal).name if self._stop_signal else "a signal on another process"

    def _stop_with_dead_workers(self) -> StoppedBySignal:
        """The stop of a run whose data-loading workers died of the same signal: a checkpoint of the
        iterations completed, as any stop saves, where one process can write it alone."""
        name = self._signal_name()
        if dist_utils.is_distributed():  # a checkpoint gathers every process, which may be elsewhere now
            return StoppedBySignal(f"stopped by {name} at iteration {self._completed}, with the data-loading "
                                   f"workers; no checkpoint saved at this iteration: continue with --resume from "
                                   f"the last one", self._stop_signal)
        self.iteration = self._completed
        path = self.save()
        return StoppedBySignal(f"stopped by {name} at iteration {self._completed}, with the data-loading workers; "
                               f"checkpoint saved" + (f" to {path}" if path else "") + "; continue with --resume",
                               self._stop_signal)

    def _save_and_stop(self, iteration: int) -> None:
        self.iteration = iteration
        path = self.save()
        raise StoppedBySignal(f"stopped by {self._signal_name()} at iteration {iteration}; checkpoint saved"
                              + (f" to {path}" if path else "") + "; continue with --resume",
                              self._stop_signal)

    def _stop_during_evaluation(self, iteration: int, final: bool) -> None:
        if final:
            raise StoppedBySignal(f"stopped by {self._signal_name()} during the final evaluation; "
                                  f"{os.path.join(self.output_dir, FINAL_NAME)} is saved: --resume runs the "
                                  f"evaluation again", self._stop_signal)
        self.iteration = iteration
        name = self._signal_name()
        if self._saved_at == iteration:
            path = self.checkpointer.path(f"model_{iteration:07d}.pth")
        elif dist_utils.is_distributed():
            # Saving gathers every process, and each left the evaluation at its own point, some inside
            # its collectives: one more would pair with theirs (gloo aborts, NCCL hangs).
            raise StoppedBySignal(f"stopped by {name} during the evaluation at iteration {iteration}; no checkpoint "
                                  f"saved at this iteration: continue with --resume from the last one",
                                  self._stop_signal)
        else:
            path = self.save()
        raise StoppedBySignal(f"stopped by {name} during the evaluation at iteration {iteration}; "
                              f"checkpoint saved" + (f" to {path}" if path else "") + "; continue with --resume",
                              self._stop_signal)


class EvaluationInterrupted(BaseException):
    """Raised by the signal handler inside an evaluation (internal to the trainer). A BaseException,
    as KeyboardInterrupt is, so that code which skips a bad sample on Exception lets it through."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StoppedBySignal(UserError):
    """The run stopped on SIGTERM or SIGINT after saving a checkpoint. It exits as a process killed by
    that signal would by convention (128 + the signal number), so that job schedulers see a stop."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.exit_code = 128 + (signum or signal.SIGTERM)

