"""The degradation experiment, run as a user runs it on a tiny CIFAR set with tiny nets: the JSON against
parameter counts worked out by hand and the training log, the figure, the table; resuming; bad arguments."""

import json
import logging
import os
import re
import struct
import subprocess
import sys

import pytest

from classification.config import load_classification_config
from classification.data.synthetic_cifar import SyntheticCifarSpec, ensure_synthetic_cifar
from classification.degradation import (
    DegradationError,
    check_depths,
    check_iters,
    check_overrides,
    last_window_error,
    run_degradation,
    schedule_overrides,
)
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import subprocess_env

ITERS = 60
CONFIG = "configs/cifar_degradation.yaml"
# The config holds the last 7,500 training images out as val; the tiny set has 80 in all.
TINY_RECIPE = ["solver.ims_per_batch=8", "test.ims_per_batch=20", "data.num_workers=0", "data.val_images=20",
               "solver.warmup_iters=10"]


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "degradation.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), timeout=600)


def cifar_basic_net_parameters(depth: int, classes: int = 10) -> int:
    """Parameters of a 6n+2 CIFAR net with option-A shortcuts, counted layer by layer: each 3x3 conv has
    9 * in * out weights and no bias, each BN a scale and an offset per channel, the fc weights and biases."""
    n = (depth - 2) // 6
    total = 9 * 3 * 16 + 2 * 16  # the stem conv and its BN
    in_channels = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * in_channels * width + 2 * width  # first conv of the unit (stride 2 when widening)
            total += 9 * width * width + 2 * width
            in_channels = width
    return total + 64 * classes + classes


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return ensure_synthetic_cifar(str(root), SyntheticCifarSpec(train_images=80, test_images=30))


@pytest.fixture(scope="module")
def experiment(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("degradation")
    result = run_tool("--depths", "14", "8", "--iters", str(ITERS), "--out", str(out), f"data.root={tiny_cifar}",
                      *TINY_RECIPE)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_the_hand_count_matches_the_paper():
    # Table 6's 0.27M and 0.85M, as the parameter count used below computes them.
    assert round(cifar_basic_net_parameters(20) / 1e6, 2) == 0.27
    assert round(cifar_basic_net_parameters(56) / 1e6, 2) == 0.85
    assert cifar_basic_net_parameters(20) == 269722


def test_the_json_lists_each_net_with_its_parameters_and_errors(experiment):
    out, _ = experiment
    runs = json.loads((out / "degradation.json").read_text())["runs"]
    assert [(r["net"], r["depth"], r["residual"]) for r in runs] == [
        ("plain-8", 8, False), ("ResNet-8", 8, True), ("plain-14", 14, False), ("ResNet-14", 14, True)]
    for run in runs:
        assert set(run) == {"net", "depth", "residual", "params", "iters", "train_error", "test_error", "in_table_6",
                            "full_lr_from_iteration"}
        assert run["in_table_6"] is False  # a synthetic set: no figure of the paper's beside it
        assert run["full_lr_from_iteration"] is None  # no warm-up below 110 layers
        assert run["params"] == cifar_basic_net_parameters(run["depth"])
        assert run["iters"] == ITERS
        assert 0 <= run["train_error"] <= 100 and 0 <= run["test_error"] <= 100


def test_the_training_error_is_the_mean_of_the_last_50_iterations(experiment):
    out, _ = experiment
    for run in json.loads((out / "degradation.json").read_text())["runs"]:
        records = [json.loads(line) for line in (out / run["net"] / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r.get("type") == "train"]
        # Logged every 10 iterations, each record the mean of its 10: the last 5 cover the last 50.
        assert [r["iteration"] for r in train] == list(range(10, ITERS + 1, 10))
        assert run["train_error"] == pytest.approx(sum(r["train_error"] for r in train[-5:]) / 5, abs=1e-4)
        final = [r for r in records if r.get("type") == "eval"][-1]
        assert final["iteration"] == ITERS and run["test_error"] == final["test"]["top1_err"]


def test_the_schedule_is_scaled_and_said(experiment):
    out, result = experiment
    saved = (out / "plain-8" / "config.yaml").read_text()
    # configs/cifar_degradation.yaml: steps 600 and 900 of 1200, evaluation every 240, checkpoints every 200,
    # a linear warm-up of its own length (10 iterations here; the config's 100 would cover the steps).
    assert "- 30\n" in saved and "- 45\n" in saved and "max_iter: 60" in saved
    cfg = load_classification_config(str(out / "plain-8" / "config.yaml"))
    assert list(cfg.solver.steps) == [30, 45] and cfg.test.eval_period == 12 and cfg.solver.checkpoint_period == 10
    assert cfg.solver.warmup_iters == 10 and "after a linear warm-up over the first 10 iterations" in result.stdout
    assert cfg.solver.log_period == 10 and cfg.model.backbone.plain and cfg.model.backbone.depth == 8
    assert "divided by 10 at iterations 30, 45" in result.stdout
    assert "50%, 75%" in result.stdout


def test_the_table_has_the_shape_of_table_6(experiment):
    out, _ = experiment
    runs = json.loads((out / "degradation.json").read_text())["runs"]
    rows = [line for line in (out / "degradation.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| network | layers | parameters | training error (%) | test error (%)")
    for run, row in zip(runs, rows[1:], strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:3] == [run["net"], str(run["depth"]), f"{run['params'] / 1e6:.2f}M ({run['params']:,})"]
        assert float(cells[3]) == pytest.approx(run["train_error"], abs=0.005)
        assert float(cells[4]) == pytest.approx(run["test_error"], abs=0.005)
        assert cells[5] == "-"  # the paper has no 8- or 14-layer net


def test_the_figure_is_a_png_of_two_panels_size(experiment):
    out, _ = experiment
    data = (out / "degradation.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 1400 and 300 <= height <= 600 and len(data) > 20000


def test_resume_reuses_finished_nets_and_continues_the_others(tiny_cifar, tmp_path, caplog):
    out = str(tmp_path / "out")
    overrides = [f"data.root={tiny_cifar}", *TINY_RECIPE]
    first = json.loads(open(run_degradation(CONFIG, overrides, [8], 50, out).json_path).read())
    # ResNet-8 stopped after its last periodic checkpoint (every 8 iterations: 200 of 1200 scaled to 50).
    for name in ("model_final.pth", "metrics.json", "last_checkpoint"):
        os.remove(os.path.join(out, "ResNet-8", name))
    finished = os.path.getmtime(os.path.join(out, "plain-8", "model_final.pth"))
    with pytest.raises(UserError, match="holds the checkpoints of an earlier run"):
        run_degradation(CONFIG, overrides, [8], 50, out)
    caplog.set_level(logging.INFO)
    again = json.loads(open(run_degradation(CONFIG, overrides, [8], 50, out, resume=True).json_path).read())
    assert "plain-8: reusing the finished run" in caplog.text and "resumed from" in caplog.text
    assert os.path.getmtime(os.path.join(out, "plain-8", "model_final.pth")) == finished
    # The continued run ends where the uninterrupted one did.
    for before, after in zip(first["runs"], again["runs"], strict=True):
        assert after["train_error"] == pytest.approx(before["train_error"], abs=1e-6)
        assert after["test_error"] == before["test_error"]


def test_a_bad_depth_gets_one_line_and_trains_nothing(tmp_path):
    result = run_tool("--depths", "20", "21", "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: --depths 21: the plain and residual CIFAR nets have 6n+2 layers of basic units with n >= 1 (8, 14, "
        "20, 32, 44, 56, 110, 1202; 164 and 1001 name bottleneck nets): give such depths"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("depths, iters, overrides, message", [
    ([164], None, [], "--depths 164"),
    ([20], 45, [], "--iters 45: give a multiple of 10 of at least 50"),
    ([20], 105, [], "--iters 105"),
    ([20], None, ["model.backbone.depth=20"], "sets model.backbone.depth itself (from --depths)"),
    ([20], None, ["data.dataset=imagenet"], "the degradation experiment trains CIFAR nets"),
])
def test_bad_arguments_stop_before_training(depths, iters, overrides, message, tmp_path):
    with pytest.raises(DegradationError, match=re.escape(message)):
        run_degradation(CONFIG, overrides, depths, iters, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_report_of_other_depths_is_kept(tmp_path):
    """A second run into the same --out with other depths replaced the first run's table and figure."""
    from classification.degradation import check_report_kept
    (tmp_path / "degradation.json").write_text(json.dumps({"runs": [{"depth": 8}, {"depth": 8}, {"depth": 14}]}))
    check_report_kept(str(tmp_path), [8, 14, 20], overwrite=False)
    check_report_kept(str(tmp_path), [20], overwrite=True)
    with pytest.raises(DegradationError) as error:
        check_report_kept(str(tmp_path), [14, 20], overwrite=False)
    assert str(error.value) == (f"{tmp_path}/degradation.json reports depths 8, 14, and this run trains 14, 20: its "
                                "report would lose depth 8; give all of them (--depths 8 14 20 --resume reuses the "
                                "finished nets), another --out, or --overwrite")


def test_the_checks_directly():
    assert check_depths([56, 20, 20]) == [20, 56]
    assert check_iters(50) == 50
    for bad in ([], [2], [9], [1001]):
        with pytest.raises(DegradationError):
            check_depths(bad)
    with pytest.raises(DegradationError, match="a folder of --out"):
        check_overrides(["output_dir=x"])


def test_the_paper_schedule_scales_to_its_fractions():
    base = load_classification_config(os.path.join(ROOT, "configs", "base_cifar.yaml"))
    overrides, sentence = schedule_overrides(base, 6400)
    assert "solver.steps=[3200, 4800]" in overrides and "solver.max_iter=6400" in overrides
    # eval and checkpoints every 4000 of 64000 iterations: every 400 of 6400.
    assert "test.eval_period=400" in overrides and "solver.checkpoint_period=400" in overrides
    assert "at iterations 3200, 4800" in sentence and "50%, 75% of its 64000" in sentence
    # The degradation config's warm-up keeps its 100 iterations: a run of 60 would end in it, its steps (at 30
    # and 45) never taken from the lr the table names.
    with pytest.raises(DegradationError, match=r"--iters 60: the linear warm-up over the first 100 iterations would "
                                               r"cover the first lr step, scaled to iteration 30: give more "):
        schedule_overrides(load_classification_config(os.path.join(ROOT, CONFIG)), 60)


def test_the_window_weights_partial_records(tmp_path):
    # A stop by signal logged a partial window at 57; the resumed run logged 58..60 at 60.
    lines = [{"iteration": i, "type": "train", "train_error": e} for i, e in
             [(10, 99.0), (20, 50.0), (30, 40.0), (40, 30.0), (50, 20.0), (57, 10.0), (60, 0.0)]]
    lines.insert(3, {"iteration": 30, "type": "eval", "test": {"top1_err": 5.0}})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    expected = (10 * 50 + 10 * 40 + 10 * 30 + 10 * 20 + 7 * 10 + 3 * 0) / 50
    assert last_window_error(str(tmp_path), 60) == pytest.approx(expected)
    with pytest.raises(DegradationError, match="last 50 iterations up to 70"):
        last_window_error(str(tmp_path), 70)


def test_the_papers_figure_stands_only_beside_the_net_it_reports():
    from classification.degradation import DegradationRun, degradation_table
    runs = [DegradationRun("ResNet-110", 110, True, 1_727_962, 60, 1.0, 7.0, in_table_6=True),
            DegradationRun("pre-act ResNet-110", 110, True, 1_727_962, 60, 1.0, 30.5, in_table_6=False)]
    rows = [line for line in degradation_table(runs, "60 iterations", "CIFAR-100").splitlines() if line.startswith("| ")]
    assert rows[1].endswith("| 6.43 (best of 5; mean 6.61 ± 0.16) |") and rows[2].endswith("| - |")


def test_table_6_as_the_paper_prints_it():
    from classification.degradation import PAPER_RESNET_TEST_ERROR
    assert PAPER_RESNET_TEST_ERROR == {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}


def official_cifar10_folder(root) -> str:
    """A folder laid out as the official archive (the files' contents are not read here)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        (folder / name).write_bytes(b"")
    return str(root)


@pytest.mark.parametrize("overrides, expected", [
    ([], True),
    (["model.backbone.norm=gn"], False),
    (["model.backbone.zero_init_residual=true"], False),
    (["model.backbone.shortcut=B"], False),
    (["model.backbone.plain=true"], False),
])
def test_the_papers_figure_needs_the_papers_net_on_the_official_files(tmp_path, overrides, expected):
    from classification.degradation import describe_dataset, in_table_6
    root = official_cifar10_folder(tmp_path)
    cfg = load_classification_config(os.path.join(ROOT, "configs", "cifar10_resnet20.yaml"),
                                     [f"data.root={root}", *overrides])
    assert in_table_6(cfg) is expected
    assert describe_dataset(cfg) == f"CIFAR-10 in {root}"
    if expected:  # the same net on the toolkit's synthetic sets has no figure beside it
        assert not in_table_6(load_classification_config(os.path.join(ROOT, "configs", "cifar10_resnet20.yaml")))
        (tmp_path / "cifar-10-batches-bin" / "synthetic.json").write_text("{}")
        assert not in_table_6(cfg)
        assert describe_dataset(cfg) == f"a synthetic set in the CIFAR-10 format in {root}"


def test_a_held_out_split_is_said_beside_table_6(tmp_path):
    from classification.degradation import describe_dataset
    root = official_cifar10_folder(tmp_path)
    cfg = load_classification_config(os.path.join(ROOT, "configs", "cifar10_resnet20.yaml"),
                                     [f"data.root={root}", "data.train_split=train"])
    assert describe_dataset(cfg) == (f"CIFAR-10 in {root}, trained on 45,000 of its 50,000 training images "
                                      "(data.train_split=train; Table 6's nets train on all)")


def test_where_the_warm_up_ended_is_read_from_the_runs_metrics(tmp_path):
    from classification.degradation import full_lr_from_iteration
    cfg = load_classification_config(os.path.join(ROOT, "configs", "cifar10_resnet110.yaml"),
                                     [f"output_dir={tmp_path}"])
    record = {"metric": "train_error", "below": 80, "lr_factor": 0.1}
    for ended, expected in [(412, 412), (None, -1)]:
        (tmp_path / "metrics.json").write_text(json.dumps({"test": {"top1_err": 9.0},
                                                           "metric_warmup": {**record, "full_lr_from_iteration": ended}}))
        assert full_lr_from_iteration(cfg) == expected
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"top1_err": 9.0}}))
    assert full_lr_from_iteration(load_classification_config(
        os.path.join(ROOT, "configs", "cifar10_resnet20.yaml"), [f"output_dir={tmp_path}"])) is None


def test_the_warm_up_of_deep_nets_is_said_and_where_it_ended():
    from classification.degradation import DegradationRun, degradation_table, warmup_sentence
    base = load_classification_config(os.path.join(ROOT, "configs", "base_cifar.yaml"))
    assert warmup_sentence([20, 56], base) == ""
    assert warmup_sentence([20, 110], base) == ("; nets of 110 layers and more train at lr x0.1 until their training "
                                                "error is below 80% (the paper's warm-up of ResNet-110)")
    runs = [DegradationRun("plain-110", 110, False, 1_727_962, 600, 80.0, 85.0, full_lr_from_iteration=-1),
            DegradationRun("ResNet-110", 110, True, 1_727_962, 600, 10.0, 12.0, full_lr_from_iteration=412),
            DegradationRun("ResNet-20", 20, True, 269_722, 600, 10.0, 12.0)]
    lines = degradation_table(runs, "600 iterations", "CIFAR-10").splitlines()
    assert lines[-2:] == ["- plain-110: never left the warm-up: the whole run trained below the learning rate the "
                          "schedule names.", "- ResNet-110: left the warm-up at iteration 412 of 600."]
    assert "The paper's column is empty" in lines[0]
