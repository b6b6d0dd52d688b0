"""tools/eval_loc.py run as a user runs it: metrics.json on success, one "error: ..." line and exit code 2."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.helpers import subprocess_env
from tests.localization.data.test_formats import EXPECTED, IDS, write_fixture


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
