"""Training logs, written by the main process: JSON lines (``metrics.jsonl``), always, and their
numbers mirrored to the writers the ``logging`` config section turns on: TensorBoard (on by default),
Weights & Biases and MLflow.

A resumed run continues what the earlier process started: metrics.jsonl loses the records after the
checkpoint's iteration, TensorBoard hides them, and the trackers continue the same run (its id is
kept in ``output_dir/trackers.json``) without the iterations they already have.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import re
import sys
import time
from typing import Protocol

import yaml
from tqdm import tqdm

from .config import flatten_tree
from .errors import UserError
from .extras import installed, package_needed
from .files import write_json, write_text
from .schema import LoggingConfig

logger = logging.getLogger(__name__)

TRACKERS_FILE = "trackers.json"


class TrackerError(UserError):
    pass


def flatten_metrics(record: dict) -> dict[str, float]:
    """The numbers of a nested metrics record by their "/"-joined names ("bbox/AP"), as TensorBoard
    and the plots name them."""
    return {name: float(value) for name, value in flatten_tree(record, "/")
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class MetricsWriter(Protocol):
    """A destination of the numbers of metrics.jsonl, as ``{kind}/{name}`` (``train/total_loss``,
    ``eval/bbox/AP``) at the record's iteration."""

    name: str

    def write_scalars(self, kind: str, scalars: dict[str, float], iteration: int) -> None: ...

    def close(self, finished: bool) -> None: ...


class MetricsLogger:
    """Appends records to ``output_dir/metrics.jsonl`` and mirrors their finite numbers to the writers
    of ``options`` (a ``logging`` config section; by default TensorBoard alone), which
    :meth:`start_fresh` or :meth:`resume_after` opens. ``config_text``, the run's resolved config, is
    logged once, flattened, as each tracker run's config or parameters."""

    def __init__(self, output_dir: str, enabled: bool = True, options: LoggingConfig | None = None,
                 config_text: str = ""):
        self.enabled = enabled
        self.output_dir = output_dir
        self.options = options if options is not None else LoggingConfig()
        self.config_text = config_text
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.writers: list[MetricsWriter] = []
        # On every process, so that a missing package stops all of them alike, before any work.
        check_trackers_installed(self.options)

    def start_fresh(self) -> None:
        """A run from iteration 0: new tracker runs, and the log of an earlier run in the folder kept as
        metrics.N.jsonl (the first free N) rather than mixed with this one's."""
        if not self.enabled:
            return
        self.keep_earlier_log()
        self.open_writers(resumed_at=None)

    def resume_after(self, iteration: int, drop_evaluation: bool = False) -> None:
        """A run resumed from the checkpoint of ``iteration``: drop the newer records (the run repeats
        them), and with ``drop_evaluation`` the evaluation record of ``iteration`` too (the run makes it
        again), and continue the tracker runs of this folder."""
        if not self.enabled:
            return
        self.drop_records_after(iteration, drop_evaluation)
        self.open_writers(resumed_at=iteration)

    def has_record(self, iteration: int, kind: str) -> bool:
        """Whether metrics.jsonl holds a record of ``kind`` ("train", "eval") at ``iteration``."""
        return any(record.get("iteration") == iteration and record.get("type") == kind
                   for record in self.records())

    def records(self) -> list[dict]:
        """The readable records of metrics.jsonl (a line cut short by a crash is left out)."""
        if not os.path.isfile(self.path):
            return []
        records = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records

    def keep_earlier_log(self) -> None:
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        number = 1
        while os.path.exists(self.path[: -len(".jsonl")] + f".{number}.jsonl"):
            number += 1
        kept = self.path[: -len(".jsonl")] + f".{number}.jsonl"
        os.replace(self.path, kept)
        logger.info("a new run in %s: the earlier metrics.jsonl is kept as %s", os.path.dirname(self.path),
                    os.path.basename(kept))

    def drop_records_after(self, iteration: int, drop_evaluation: bool = False) -> None:
        if not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            at = record.get("iteration", 0)
            if at < iteration or (at == iteration and not (drop_evaluation and record.get("type") == "eval")):
                kept.append(line)
        # Rewritten beside and renamed: a kill during the write (a restart is when one comes) keeps the log.
        write_text(self.path, "".join(kept))

    def open_writers(self, resumed_at: int | None) -> None:
        self.close(finished=False)  # opened twice: one set of writers
        runs = TrackerRuns(self.output_dir, keep=resumed_at is not None)
        config = flat_config(self.config_text)
        try:
            if self.options.tensorboard:
                self.writers.append(TensorBoardWriter(self.output_dir, resumed_at))
            if self.options.wandb.enabled:
                self.writers.append(open_tracker(WandbWriter, self.options.wandb, self.output_dir, config, runs))
            if self.options.mlflow.enabled:
                self.writers.append(open_tracker(MlflowWriter, self.options.mlflow, self.output_dir, config, runs))
        except BaseException:
            self.close(finished=False)  # no run of one tracker left open when another cannot start
            raise

    def log(self, iteration: int, metrics: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"iteration": iteration, "type": kind, **metrics}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
        scalars = {name: value for name, value in flatten_metrics(metrics).items() if math.isfinite(value)}
        for writer in list(self.writers):
            try:
                writer.write_scalars(kind, scalars, iteration)
            except Exception as error:  # noqa: BLE001 - a tracker's server down must not end a long run
                self.writers.remove(writer)
                logger.warning("%s failed at iteration %d (%s): nothing more is sent to it in this run; "
                               "metrics.jsonl has every record", writer.name, iteration, first_line(error))

    def close(self, finished: bool = True) -> None:
        """Close the writers; ``finished``: the run reached its end (else it stopped, to be resumed)."""
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.close(finished)


def flat_config(config_text: str) -> dict:
    """The resolved config (YAML text) as {dotted key: value}."""
    tree = yaml.safe_load(config_text) if config_text else None
    return dict(flatten_tree(tree)) if isinstance(tree, dict) else {}


def check_trackers_installed(options: LoggingConfig) -> None:
    for tracker, module in (("wandb", "wandb"), ("mlflow", "mlflow")):
        if getattr(options, tracker).enabled and not installed(module):
            raise package_needed(module, f"logging.{tracker}.enabled=true")


class TrackerRuns:
    """``output_dir/trackers.json``: for each tracker, the id of this folder's run and the last iteration
    sent to it. ``keep=False`` (a run from iteration 0) forgets the runs of an earlier training."""

    def __init__(self, output_dir: str, keep: bool):
        self.path = os.path.join(output_dir, TRACKERS_FILE)
        self.runs: dict = {}
        if keep and os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as handle:
                    self.runs = json.load(handle)
            except (OSError, json.JSONDecodeError) as error:
                logger.warning("%s cannot be read (%s): the trackers start new runs", self.path, error)

    def get(self, tracker: str) -> dict:
        saved = self.runs.get(tracker)
        return saved if isinstance(saved, dict) else {}

    def update(self, tracker: str, **values) -> None:
        self.runs[tracker] = {**self.get(tracker), **values}
        write_json(self.runs, self.path)


def open_tracker(writer_type, options, output_dir: str, config: dict, runs: TrackerRuns):
    """``writer_type``'s run, or one line naming the config section when the tracker cannot start it
    (no API key, a tracking URI it refuses, ...)."""
    try:
        return writer_type(options, output_dir, config, runs)
    except Exception as error:  # noqa: BLE001 - each tracker has its own exceptions
        raise TrackerError(f"logging.{writer_type.name}: {writer_type.title} could not start its run: "
                           f"{first_line(error)}") from None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class TensorBoardWriter:
    """Event files in ``output_dir/tensorboard``. On resume TensorBoard hides the events after the
    checkpoint's iteration (purge_step), as metrics.jsonl drops them: the resumed run writes them anew."""

    name = "tensorboard"

    def __init__(self, output_dir: str, resumed_at: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"),
                                    purge_step=None if resumed_at is None else resumed_at + 1)

    def write_scalars(self, kind: str, scalars: dict[str, float], iteration: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(f"{kind}/{name}", value, iteration)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


def logged_iterations(saved) -> dict[str, int]:
    """{record kind: the last iteration a tracker's run was sent} from trackers.json (one number for all
    kinds in files written before the kinds were kept apart)."""
    if isinstance(saved, dict):
        return {str(kind): int(value) for kind, value in saved.items()}
    if isinstance(saved, int):
        return {"train": saved, "eval": saved}
    return {}


class TrackerWriter(abc.ABC):
    """A tracker's run for an output folder: a new one for a run from iteration 0, the same one again
    for a resumed run, which is not sent the iterations the run already has (those before the
    resume, which the resumed run repeats): neither tracker can replace a logged point."""

    name, title = "", ""

    def __init__(self, runs: TrackerRuns):
        saved = runs.get(self.name)
        self.runs = runs
        self.run_id: str | None = saved.get("run_id")
        self.logged_through: dict[str, int] = logged_iterations(saved.get("last_iteration")) if self.run_id else {}

    def write_scalars(self, kind: str, scalars: dict[str, float], iteration: int) -> None:
        # Per kind: a final evaluation run again after --resume is at the iteration of a train record
        # already sent, and is sent all the same.
        if iteration <= self.logged_through.get(kind, -1) or not scalars:
            return
        self.send({f"{kind}/{name}": value for name, value in scalars.items()}, iteration)
        self.logged_through[kind] = iteration
        self.runs.update(self.name, last_iteration=dict(self.logged_through))

    @abc.abstractmethod
    def send(self, scalars: dict[str, float], iteration: int) -> None:
        """Give the tracker's run ``scalars`` (named "kind/name") at step ``iteration``."""


class WandbWriter(TrackerWriter):
    """A Weights & Biases run (logging.wandb). W&B keeps one history row per step and, online, drops a
    step below the run's current one with a warning; an offline run knows nothing of the earlier
    process, so the steps it already has are skipped here for both."""

    name, title = "wandb", "Weights & Biases"

    def __init__(self, options, output_dir: str, config: dict, runs: TrackerRuns):
        import wandb

        super().__init__(runs)
        fresh = self.run_id is None  # W&B names a new run; a resumed one gives its id back
        self.run = wandb.init(project=options.project, entity=options.entity or None,
                              name=options.name or os.path.basename(os.path.abspath(output_dir)),
                              mode=options.mode or None, dir=os.environ.get("WANDB_DIR", output_dir),
                              id=self.run_id, resume=None if fresh else "allow", config=config if fresh else None)
        self.run_id = self.run.id
        runs.update(self.name, run_id=self.run_id, last_iteration=dict(self.logged_through))

    def send(self, scalars: dict[str, float], iteration: int) -> None:
        self.run.log(scalars, step=iteration)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


# MLflow's limits per log_batch call and on a parameter's value (those of MLflow 2.9 and later).
MLFLOW_METRICS_PER_BATCH, MLFLOW_PARAMS_PER_BATCH, MLFLOW_PARAM_LENGTH = 1000, 100, 6000


def mlflow_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric and parameter names (class names of a
    custom dataset can hold any) replaced by "_"."""
    return re.sub(r"[^\w\-. :/]", "_", name)


class MlflowWriter(TrackerWriter):
    """An MLflow run (logging.mlflow), through MlflowClient: no global active run is left behind. MLflow
    appends a point to a metric's history at each call, even at a step it already has: the steps the
    run already has are skipped here."""

    name, title = "mlflow", "MLflow"

    def __init__(self, options, output_dir: str, config: dict, runs: TrackerRuns):
        from mlflow.tracking import MlflowClient

        super().__init__(runs)
        self.client = MlflowClient(tracking_uri=options.tracking_uri or None)
        if self.run_id is not None and self.continue_run(self.run_id):
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id, self.logged_through = self.new_run(options, output_dir), {}
            self.log_params(config)
        runs.update(self.name, run_id=self.run_id, last_iteration=dict(self.logged_through))

    def continue_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            logger.warning("MLflow has no run %s (the run of this folder) at %s: a new run starts", run_id,
                           self.client.tracking_uri)
            return False
        return True

    def new_run(self, options, output_dir: str) -> str:
        experiment_name = options.experiment or "Default"
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        run_name = options.run_name or os.path.basename(os.path.abspath(output_dir))
        return self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(mlflow_name(key), str(value)[:MLFLOW_PARAM_LENGTH]) for key, value in config.items()]
        for start in range(0, len(params), MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MLFLOW_PARAMS_PER_BATCH])

    def send(self, scalars: dict[str, float], iteration: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(name), value, timestamp, iteration) for name, value in scalars.items()]
        for start in range(0, len(metrics), MLFLOW_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + MLFLOW_METRICS_PER_BATCH])

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                unit="it", smoothing=0.1)
