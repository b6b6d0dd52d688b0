"""tools/eval_loc.py run as a user runs it: metrics.json on success (in model mode beside the run's own),
one "error: ..." line and exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from classification.data.synthetic_ilsvrc import WNIDS, ensure_synthetic_loc
from localization.rpn_localizer import build_localizer
from resnet_engine.checkpoint import atomic_save
from tests.conftest import ROOT
from tests.helpers import subprocess_env
from tests.localization.data.test_formats import EXPECTED, IDS, write_fixture
from tests.localization.test_rpn_localizer import TINY_DATA, TINY_LOCALIZER, tiny_config


def run_eval_loc(*args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_loc.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_scoring_mode_writes_metrics_json(tmp_path):
    write_fixture(tmp_path)
    result = run_eval_loc("--gt", str(tmp_path / "xml"), "--pred", str(tmp_path / "pred.txt"),
                          "--synsets", str(tmp_path / "map_clsloc.txt"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == EXPECTED
    assert "# guesses" in result.stdout and "top-5 LOC error 50.00%" in result.stdout


def test_missing_predictions_give_a_one_line_warning(tmp_path):
    write_fixture(tmp_path)
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(IDS[1])]
    (tmp_path / "pred.csv").write_text("\n".join(kept) + "\n")
    result = run_eval_loc("--gt", str(tmp_path / "gt.csv"), "--pred", str(tmp_path / "pred.csv"),
                          "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    # IDS[1] left out of the file and IDS[3] with an empty row
    assert result.stderr.strip().splitlines() == [
        f"warning: 2 of 4 ground-truth images have no prediction (e.g. {IDS[1]}); they count as wrong"]
    assert json.loads((tmp_path / "metrics.json").read_text())["top5_loc_err"] == 75.0


def test_bad_file_gives_one_error_line_and_exit_code_2(tmp_path):
    write_fixture(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,PredictionString\na,n01 1 2 3 4\nb,n01 1 2 3\n")
    result = run_eval_loc("--gt", str(tmp_path / "gt.csv"), "--pred", str(bad), "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad} line 3: PredictionString has 4 tokens; it must be groups of 5 "
        "'wnid xmin ymin xmax ymax'"]
    assert not (tmp_path / "metrics.json").exists()


def test_scoring_mode_needs_gt_and_pred(tmp_path):
    result = run_eval_loc("--gt", str(tmp_path / "gt.csv"))
    assert result.returncode == 2 and "give --gt and --pred" in result.stderr


def test_model_mode_leaves_the_runs_metrics_json_alone(tmp_path):
    """The run's metrics.json is its training's final evaluation: an evaluation afterwards (another
    checkpoint, another test mode) writes into a folder of its own, named after the weights."""
    root = ensure_synthetic_loc(str(tmp_path / "data"), **TINY_DATA)
    run = tmp_path / "run"
    run.mkdir()
    localizer = build_localizer(tiny_config(root, run), len(WNIDS))
    atomic_save({"model": localizer.state_dict(), "meta": {"task": "localization", "wnids": list(WNIDS)}},
                str(run / "model_final.pth"))
    own = '{"loc": {"test_mode": "dense"}}\n'
    (run / "metrics.json").write_text(own)
    result = run_eval_loc("--cfg", os.path.join(ROOT, "configs", "shapes_loc.yaml"), "--test-mode", "1crop",
                          *TINY_LOCALIZER, f"data.root={root}", f"output_dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = run / "eval_model_final"
    assert result.stdout.splitlines()[-1] == f"metrics written to {evaluated / 'metrics.json'}"
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["weights"] == str(run / "model_final.pth") and metrics["test_mode"] == "1crop"
    assert metrics["submission"] == str(evaluated / "loc_1crop_submission.csv")
    assert (evaluated / "loc_1crop_submission.csv").is_file()
    assert (run / "metrics.json").read_text() == own


@pytest.mark.parametrize("mode", [["--weights", "w.pth"], ["--gt", "gt.csv", "--pred", "pred.csv"]])
def test_an_out_or_plots_that_cannot_be_written_stops_before_any_work(mode, tmp_path):
    """gt.csv, pred.csv and w.pth do not exist: the evaluation would stop at them, after the data was
    prepared in model mode; an output folder that cannot be made stops first."""
    (tmp_path / "taken").write_text("")
    result = run_eval_loc(*mode, "--out", str(tmp_path / "taken"))
    assert result.returncode == 2
    assert result.stderr == f"error: --out {tmp_path / 'taken'} is a file, not a folder: give a folder for the outputs\n"
    plots = tmp_path / "taken" / "plots"
    result = run_eval_loc(*mode, "--out", str(tmp_path / "out"), "--plots", str(plots), "--images", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"error: --plots {plots}: {tmp_path / 'taken'} is a file, so no folder can be made there\n"
    assert not (tmp_path / "out").exists()


def test_scoring_mode_plots_without_images_stop_before_scoring(tmp_path):
    write_fixture(tmp_path)
    result = run_eval_loc("--gt", str(tmp_path / "gt.csv"), "--pred", str(tmp_path / "pred.csv"),
                          "--out", str(tmp_path / "out"), "--plots", str(tmp_path / "plots"))
    assert result.returncode == 2
    assert result.stderr == ("error: --plots in scoring mode needs --images (the folder of the val images) "
                             "(python eval_loc.py --help lists the options)\n")
    assert not (tmp_path / "out").exists()
