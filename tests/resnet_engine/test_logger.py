"""Metrics records flattened to the names TensorBoard and the plots give them, JSON written in one step,
and the writers the records are mirrored to: MLflow (a file store in the test's folder, read back
through its client) and Weights & Biases (offline), on a fresh run and on a resumed one."""

import json
import logging
import math
import sys

import pytest

from resnet_engine.config import flatten_tree
from resnet_engine.errors import UserError
from resnet_engine.files import write_json
from resnet_engine.logger import TRACKERS_FILE, MetricsLogger, flatten_metrics
from resnet_engine.schema import LoggingConfig, MlflowConfig, WandbConfig
from tests.resnet_engine.toy_training import ToyModel, make_trainer


def test_metrics_keep_their_numbers_under_slash_joined_names():
    record = {"iteration": 5, "bbox": {"AP": 31.5, "per_class": {"cat": 2}}, "done": True, "name": "x",
              "empty": {}}
    assert flatten_metrics(record) == {"iteration": 5.0, "bbox/AP": 31.5, "bbox/per_class/cat": 2.0}


def test_a_config_tree_keeps_every_leaf_under_dotted_keys():
    tree = {"model": {"rpn": {"nms_thresh": 0.7}, "extra": {}}, "seed": None}
    assert list(flatten_tree(tree)) == [("model.rpn.nms_thresh", 0.7), ("model.extra", {}), ("seed", None)]
    assert list(flatten_tree(tree, "/")) == [("model/rpn/nms_thresh", 0.7), ("model/extra", {}), ("seed", None)]
    assert list(flatten_tree({})) == []


def test_json_is_written_whole_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "new" / "metrics.json"
    write_json({"bbox": {"AP": 1.5}}, str(path))
    write_json([1, 2], str(path))
    assert json.loads(path.read_text()) == [1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary file left


CONFIG_TEXT = "solver:\n  base_lr: 0.02\n  steps: [60000, 80000]\nmodel:\n  backbone:\n    depth: 50\n"
FLAT_CONFIG = {"solver.base_lr": 0.02, "solver.steps": [60000, 80000], "model.backbone.depth": 50}


@pytest.fixture
def mlflow_logging(tmp_path, monkeypatch) -> LoggingConfig:
    """MLflow on a file store in tmp_path (MLflow 3 asks for the switch to use one), TensorBoard off."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    return LoggingConfig(tensorboard=False, mlflow=MlflowConfig(enabled=True, tracking_uri=uri, experiment="toy"))


def mlflow_client(options: LoggingConfig):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=options.mlflow.tracking_uri)


def history(client, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((point.step, point.value) for point in client.get_metric_history(run_id, name))


def runs_of(client, experiment: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def saved_run_id(output_dir, tracker: str) -> str:
    return json.loads((output_dir / TRACKERS_FILE).read_text())[tracker]["run_id"]


def test_mlflow_gets_every_finite_number_at_its_iteration_and_the_config_once(tmp_path, mlflow_logging):
    out = tmp_path / "run_a"
    out.mkdir()
    metrics_logger = MetricsLogger(str(out), options=mlflow_logging, config_text=CONFIG_TEXT)
    metrics_logger.start_fresh()
    metrics_logger.log(2, {"total_loss": 1.25, "lr": 0.02, "max_mem_mb": 7})
    metrics_logger.log(4, {"total_loss": 0.75, "lr": 0.002, "loss_nan": math.nan})
    metrics_logger.log(4, {"bbox": {"AP": 31.5}, "per_category": {"hair drier (new)": 2.5}}, kind="eval")
    metrics_logger.close()

    client = mlflow_client(mlflow_logging)
    (run,) = runs_of(client, "toy")
    assert run.info.run_id == saved_run_id(out, "mlflow") and run.info.run_name == "run_a"
    assert run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "train/total_loss") == [(2, 1.25), (4, 0.75)]
    assert history(client, run.info.run_id, "train/lr") == [(2, 0.02), (4, 0.002)]
    assert history(client, run.info.run_id, "train/max_mem_mb") == [(2, 7.0)]
    assert history(client, run.info.run_id, "eval/bbox/AP") == [(4, 31.5)]
    # MLflow refuses parentheses in names: the class name reaches it with them replaced.
    assert history(client, run.info.run_id, "eval/per_category/hair drier _new_") == [(4, 2.5)]
    assert sorted(run.data.metrics) == ["eval/bbox/AP", "eval/per_category/hair drier _new_", "train/lr",
                                        "train/max_mem_mb", "train/total_loss"]  # no NaN point
    assert run.data.params == {key: str(value) for key, value in FLAT_CONFIG.items()}


def test_a_resumed_run_continues_its_mlflow_run_without_the_iterations_it_has(tmp_path, mlflow_logging):
    first = MetricsLogger(str(tmp_path), options=mlflow_logging, config_text=CONFIG_TEXT)
    first.start_fresh()
    for iteration, loss in ((2, 3.0), (4, 2.0), (6, 1.0)):
        first.log(iteration, {"total_loss": loss})
    first.close(finished=False)  # stopped; its last checkpoint is at iteration 4
    client = mlflow_client(mlflow_logging)
    run_id = saved_run_id(tmp_path, "mlflow")
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = MetricsLogger(str(tmp_path), options=mlflow_logging, config_text=CONFIG_TEXT.replace("0.02", "0.01"))
    resumed.resume_after(4)
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.log(6, {"total_loss": 1.5})  # the resumed run repeats iteration 6: MLflow has it already
    resumed.log(8, {"total_loss": 0.5})
    resumed.close()
    assert [run.info.run_id for run in runs_of(client, "toy")] == [run_id]
    assert history(client, run_id, "train/total_loss") == [(2, 3.0), (4, 2.0), (6, 1.0), (8, 0.5)]
    assert client.get_run(run_id).data.params["solver.base_lr"] == "0.02"  # the config is logged once
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["total_loss"]) for r in lines] == [(2, 3.0), (4, 2.0), (6, 1.5), (8, 0.5)]

    again = MetricsLogger(str(tmp_path), options=mlflow_logging)
    again.start_fresh()  # a run from iteration 0 in the folder (--overwrite): a run of its own
    again.log(2, {"total_loss": 9.0})
    again.close()
    new_id = saved_run_id(tmp_path, "mlflow")
    assert new_id != run_id and len(runs_of(client, "toy")) == 2
    assert history(client, new_id, "train/total_loss") == [(2, 9.0)]


def test_a_final_evaluation_run_again_after_resume_reaches_the_tracker(tmp_path, mlflow_logging):
    """The final evaluation was stopped by a signal after the last train record was sent; --resume runs it
    again at that iteration. With one "sent through" number for all kinds, its record was dropped."""
    first = MetricsLogger(str(tmp_path), options=mlflow_logging)
    first.start_fresh()
    first.log(4, {"total_loss": 2.0})
    first.log(6, {"total_loss": 1.0})  # the last train record; then the final evaluation is interrupted
    first.close(finished=False)
    resumed = MetricsLogger(str(tmp_path), options=mlflow_logging)
    resumed.resume_after(6)
    resumed.log(6, {"bbox": {"AP": 31.0}}, kind="eval")
    resumed.close()
    client, run_id = mlflow_client(mlflow_logging), saved_run_id(tmp_path, "mlflow")
    assert history(client, run_id, "eval/bbox/AP") == [(6, 31.0)]
    assert history(client, run_id, "train/total_loss") == [(4, 2.0), (6, 1.0)]


def test_a_tracker_that_fails_during_a_run_is_dropped_with_a_warning(tmp_path, mlflow_logging, caplog):
    from mlflow.exceptions import MlflowException

    metrics_logger = MetricsLogger(str(tmp_path), options=mlflow_logging)
    metrics_logger.start_fresh()
    metrics_logger.log(2, {"total_loss": 1.0})

    def server_down(*args, **kwargs):
        raise MlflowException("API request failed: connection refused")

    (writer,) = metrics_logger.writers
    writer.client.log_batch = server_down
    with caplog.at_level(logging.WARNING, logger="resnet_engine.logger"):
        metrics_logger.log(4, {"total_loss": 0.5})
        metrics_logger.log(6, {"total_loss": 0.25})
    assert [r.getMessage() for r in caplog.records] == [
        "mlflow failed at iteration 4 (API request failed: connection refused): nothing more is sent to it in "
        "this run; metrics.jsonl has every record"]
    assert metrics_logger.writers == []
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4, 6]


def test_a_tracker_that_cannot_start_its_run_is_one_line(tmp_path, mlflow_logging):
    mlflow_logging.mlflow.tracking_uri = "nosuchscheme://host/path"
    metrics_logger = MetricsLogger(str(tmp_path), options=mlflow_logging)
    with pytest.raises(UserError) as caught:
        metrics_logger.start_fresh()
    message = str(caught.value)
    assert message.startswith("logging.mlflow: MLflow could not start its run: ") and "\n" not in message
    assert "nosuchscheme" in message


@pytest.mark.parametrize(("tracker", "module", "package"), [("wandb", "wandb", "wandb"),
                                                             ("mlflow", "mlflow", "mlflow-skinny")])
def test_a_tracker_without_its_package_names_the_extra(tracker, module, package, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # an import of it now fails
    options = LoggingConfig()
    getattr(options, tracker).enabled = True
    with pytest.raises(UserError) as caught:
        MetricsLogger(str(tmp_path), enabled=False, options=options)  # every process checks, not the main alone
    assert str(caught.value) == (f"logging.{tracker}.enabled=true needs {package}, which is not installed: "
                                 f"pip install 'resnet-detection[trackers]'")


@pytest.fixture
def wandb_calls(tmp_path, monkeypatch) -> list:
    """W&B offline in tmp_path (no network); the real runs, each of their log calls recorded as
    (run id, data, step)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_files"))
    (tmp_path / "wandb_files").mkdir()
    calls, runs, real_init = [], [], wandb.init

    def recording_init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        real_log = run.log
        run.log = lambda data, step=None: (calls.append((run.id, dict(data), step)), real_log(data, step=step))
        runs.append(run)
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    return calls, runs


def test_wandb_gets_the_numbers_and_a_resumed_run_keeps_its_id(tmp_path, wandb_calls):
    calls, runs = wandb_calls
    options = LoggingConfig(tensorboard=False, wandb=WandbConfig(enabled=True, project="toy", mode="offline"))
    out = tmp_path / "run_w"
    out.mkdir()
    first = MetricsLogger(str(out), options=options, config_text=CONFIG_TEXT)
    first.start_fresh()
    first.log(2, {"total_loss": 3.0, "loss_nan": math.nan})
    first.log(2, {"bbox": {"AP": 12.5}}, kind="eval")
    first.log(4, {"total_loss": 2.0})
    assert runs[0].offline and runs[0].name == "run_w" and runs[0].project == "toy"
    assert dict(runs[0].config) == FLAT_CONFIG
    first.close(finished=False)
    run_id = saved_run_id(out, "wandb")

    resumed = MetricsLogger(str(out), options=options, config_text=CONFIG_TEXT)
    resumed.resume_after(2)
    resumed.log(4, {"total_loss": 2.5})  # W&B has iteration 4 already
    resumed.log(6, {"total_loss": 1.0})
    resumed.close()
    assert runs[1].id == run_id == runs[0].id and saved_run_id(out, "wandb") == run_id
    assert dict(runs[1].config) == {}  # the config was logged once, by the first process
    assert calls == [(run_id, {"train/total_loss": 3.0}, 2), (run_id, {"eval/bbox/AP": 12.5}, 2),
                     (run_id, {"train/total_loss": 2.0}, 4), (run_id, {"train/total_loss": 1.0}, 6)]


def test_a_training_run_with_mlflow_logs_its_records_and_resumes_into_the_same_run(tmp_path, mlflow_logging):
    """The toy trainer: MLflow has each logged record's loss and learning rate at its iteration, and a
    run resumed from an earlier checkpoint adds only the iterations MLflow lacks to the same run."""
    def logged(name):
        return {r["iteration"]: r[name] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}

    make_trainer(ToyModel(), tmp_path, checkpoint_period=2, logging_cfg=mlflow_logging,
                 config_text=CONFIG_TEXT).train()
    first_losses, first_lrs = logged("loss"), logged("lr")
    assert sorted(first_losses) == [2, 4, 6]
    client = mlflow_client(mlflow_logging)
    (run,) = runs_of(client, "toy")
    assert run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "train/loss") == sorted(first_losses.items())
    assert history(client, run.info.run_id, "train/lr") == sorted(first_lrs.items())

    (tmp_path / "model_final.pth").unlink()  # as if the process had died after logging iteration 6
    trainer = make_trainer(ToyModel(), tmp_path, checkpoint_period=2, max_iter=8, logging_cfg=mlflow_logging,
                           config_text=CONFIG_TEXT)
    assert trainer.resume() and trainer.start_iter == 4
    trainer.train()
    losses = logged("loss")
    assert sorted(losses) == [2, 4, 6, 8]
    (again,) = runs_of(client, "toy")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    # The toy batches after a resume are not the first run's: iteration 6 differs, and MLflow keeps the
    # point it had.
    assert losses[6] != first_losses[6]
    assert history(client, run.info.run_id, "train/loss") == [(2, first_losses[2]), (4, first_losses[4]),
                                                              (6, first_losses[6]), (8, losses[8])]


def test_tensorboard_shows_a_resumed_run_once(tmp_path):
    """TensorBoard, as metrics.jsonl, has the resumed run's records after the checkpoint's iteration,
    not those of the process that stopped."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    first = MetricsLogger(str(tmp_path))
    first.start_fresh()
    for iteration, loss in ((2, 3.0), (4, 2.0), (6, 1.0)):
        first.log(iteration, {"total_loss": loss})
    first.close(finished=False)
    resumed = MetricsLogger(str(tmp_path))
    resumed.resume_after(4)
    resumed.log(6, {"total_loss": 1.5})
    resumed.log(8, {"total_loss": 0.5})
    resumed.close()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/total_loss")] == [(2, 3.0), (4, 2.0), (6, 1.5), (8, 0.5)]


def test_a_resume_rewrites_the_log_beside_it_so_a_kill_during_the_write_keeps_it(tmp_path, monkeypatch):
    """Resuming drops the records after the checkpoint by rewriting metrics.jsonl. Written in place,
    a kill during the write (a restart is when one comes) left the run's whole log cut or empty."""
    import resnet_engine.files as files_module

    records = [{"type": "train", "iteration": i, "loss": 1.0 / i} for i in (2, 4, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    class Killed(BaseException):  # as a KeyboardInterrupt would come
        pass

    def open_that_dies_writing(path, mode="r", **kwargs):
        handle = open(path, mode, **kwargs)
        if "w" in mode:
            handle.write("{\"type\": \"tra")  # the first bytes reach the file, then the process dies

            def write(text):
                raise Killed
            handle.write = write
        return handle

    monkeypatch.setattr(files_module, "open", open_that_dies_writing, raising=False)
    with pytest.raises(Killed):
        MetricsLogger(str(tmp_path)).drop_records_after(4)
    monkeypatch.undo()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # the partial file removed
    MetricsLogger(str(tmp_path)).drop_records_after(4)
    assert [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2, 4]
