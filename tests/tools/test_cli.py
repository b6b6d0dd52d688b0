"""The command lines, run as a user runs them: a short training run, inference, scoring, bad input."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest

from detection.data.shapes import generate_split
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, subprocess_env

TINY = TINY_DETECTOR


def run_tool(script: str, *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_split(str(root), "train", 6, seed=1)
    generate_split(str(root), "val", 3, seed=1)
    return [f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.test.ann_file={root}/annotations/instances_val.json", f"data.test.img_dir={root}/val"]


@pytest.fixture(scope="module")
def trained_run(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_tool("train_det.py", f"output_dir={out}", *TINY, *tiny_shapes)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, tiny_shapes


def test_training_run_writes_config_weights_metrics_and_logs(trained_run):
    out, _ = trained_run
    for name in ("config.yaml", "model_final.pth", "metrics.json", "metrics.jsonl", "last_checkpoint"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records if "total_loss" in r]
    assert iterations == [2, 4]
    # metrics.json is the final evaluation's record; the logged total is the sum of the logged terms.
    assert [r["bbox"] for r in records if r.get("type") == "eval"][-1] == metrics["bbox"]
    for record in (r for r in records if "total_loss" in r):
        terms = sum(v for k, v in record.items() if k.startswith("loss_"))
        assert record["total_loss"] == pytest.approx(terms, abs=1e-4)
    # The saved config alone repeats the run: it loads without any other file or override.
    from detection.config import load_detection_config

    cfg = load_detection_config(str(out / "config.yaml"), [])
    assert cfg.solver.max_iter == 4 and cfg.model.backbone.base_width == 16


def test_infer_writes_predictions_and_annotated_images(trained_run, tmp_path):
    out, data_keys = trained_run
    val_dir = [k.split("=", 1)[1] for k in data_keys if k.startswith("data.test.img_dir")][0]
    result = run_tool("infer.py", "--weights", str(out / "model_final.pth"), "--inputs", val_dir,
                      "--out", str(tmp_path), "--vis-thresh", "0", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    keys = {"file_name", "width", "height", "exif_orientation", "category_id", "category_name", "bbox", "score"}
    assert all(set(p) == keys for p in predictions)
    # Values that fit the dataset: its category ids and names, boxes (x, y, w, h) inside their image.
    ann_file = [k.split("=", 1)[1] for k in data_keys if k.startswith("data.test.ann_file")][0]
    names = {c["id"]: c["name"] for c in json.loads(open(ann_file, encoding="utf-8").read())["categories"]}
    assert len(predictions) > 0
    for prediction in predictions:
        assert names[prediction["category_id"]] == prediction["category_name"]
        height, width = cv2.imread(prediction["file_name"]).shape[:2]
        x, y, w, h = prediction["bbox"]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert 0 < prediction["score"] <= 1
    assert sorted(os.listdir(tmp_path / "vis")) == sorted(os.listdir(val_dir))


def test_eval_only_and_scoring_mode_agree(trained_run, tmp_path):
    out, data_keys = trained_run
    result = run_tool("eval_det.py", "--cfg", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                      "--out", str(tmp_path / "model"), "--plots", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr[-3000:]
    gt = [k.split("=", 1)[1] for k in data_keys if k.startswith("data.test.ann_file")][0]
    result = run_tool("eval_det.py", "--gt", gt, "--det", str(tmp_path / "model" / "detections.json"),
                      "--out", str(tmp_path / "files"))
    assert result.returncode == 0, result.stderr[-3000:]
    from_model = json.loads((tmp_path / "model" / "metrics.json").read_text())["bbox"]
    from_file = json.loads((tmp_path / "files" / "metrics.json").read_text())["bbox"]
    assert from_model == from_file
    # The final weights score what the training run reported for them.
    assert from_model == pytest.approx(json.loads((out / "metrics.json").read_text())["bbox"], abs=0.5)
    assert (tmp_path / "plots" / "pr_all.png").is_file()


def test_evaluating_a_runs_weights_leaves_its_metrics_json_alone(trained_run, tmp_path):
    """The run's metrics.json is its training's final evaluation: eval_det.py and train_det.py --eval-only
    write into a folder of their own, named after the weights, which their metrics.json records."""
    out, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    own = (run / "metrics.json").read_bytes()
    checkpoint = str(run / "model_0000002.pth")
    result = run_tool("eval_det.py", "--cfg", str(run / "config.yaml"), "--weights", checkpoint, f"output_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = run / "eval_model_0000002"
    assert result.stdout.splitlines()[-1] == f"metrics written to {evaluated / 'metrics.json'}"
    assert json.loads((evaluated / "metrics.json").read_text())["weights"] == checkpoint
    assert (evaluated / "detections.json").is_file()
    result = run_tool("train_det.py", "--cfg", str(run / "config.yaml"), "--eval-only", "--weights",
                      str(run / "model_final.pth"), f"output_dir={run}", "test.score_thresh=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "eval_model_final" / "metrics.json").read_text())
    assert metrics["weights"] == str(run / "model_final.pth") and set(metrics["bbox"]) >= {"AP", "AP50"}
    assert (run / "metrics.json").read_bytes() == own


@pytest.mark.parametrize("tool, argv", [
    ("eval_det", ["--cfg", "configs/shapes.yaml", "--weights", "w.pth", "--out", "{file}"]),
    ("eval_det", ["--gt", "gt.json", "--det", "det.json", "--out", "{file}"]),
    ("ablate_det", ["--weights", "w.pth", "--out", "{file}"]),
])
def test_an_out_that_is_a_file_stops_before_any_work(tool, argv, tmp_path, monkeypatch):
    """gt.json, det.json and w.pth do not exist: the evaluation would stop at them, after the model and data
    were loaded in model mode; an --out that cannot be written stops first."""
    from resnet_engine.errors import UserError

    taken = tmp_path / "taken"
    taken.write_text("")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *(arg.format(file=taken) for arg in argv)])
    with pytest.raises(UserError) as stopped:
        load_tool(tool).main()
    assert str(stopped.value) == f"--out {taken} is a file, not a folder: give a folder for the outputs"


@pytest.mark.parametrize("mode", [["--cfg", "configs/shapes.yaml", "--weights", "w.pth"],
                                  ["--gt", "gt.json", "--det", "det.json"]])
def test_eval_det_plots_under_a_file_stop_before_any_work(mode, tmp_path, monkeypatch):
    from resnet_engine.errors import UserError

    (tmp_path / "taken").write_text("")
    plots = tmp_path / "taken" / "plots"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["eval_det.py", *mode, "--out", str(tmp_path / "out"), "--plots", str(plots)])
    with pytest.raises(UserError) as stopped:
        load_tool("eval_det").main()
    assert str(stopped.value) == f"--plots {plots}: {tmp_path / 'taken'} is a file, so no folder can be made there"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    (["solver.base_rl=0.1"], "did you mean solver.base_lr?"),
    (["--cfg", "configs/nope.yaml"], "configs/nope.yaml"),
    (["model.backbone.depth=42"], "model.backbone.depth"),
])
def test_bad_config_is_one_line_and_exit_code_2(args, expected):
    result = run_tool("train_det.py", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def test_missing_dataset_file_is_one_line(tmp_path):
    result = run_tool("train_det.py", f"output_dir={tmp_path}", "data.synthetic=''",
                      f"data.train.ann_file={tmp_path}/missing.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the printed config
    assert last.startswith("error: ") and "missing.json" in last and "data.train.ann_file" in last, last


def test_plot_logs_writes_curves(trained_run, tmp_path):
    out, _ = trained_run
    result = run_tool("plot_logs.py", str(out), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["eval.png", "loss.png", "lr.png"]
    result = run_tool("plot_logs.py", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no metrics log" in result.stderr


def test_ablation_tool_prints_and_writes_the_table(trained_run, tmp_path):
    out, _ = trained_run
    result = run_tool("ablate_det.py", "--cfg", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                      "--scales", "128", "160", "192", "--out", str(tmp_path), "--plot", "test.max_images=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["row"] for r in rows] == ["baseline", "+box refinement", "+context", "+multi-scale"]
    assert "test.scales=[128,160,192]" in rows[3]["overrides"]
    assert all(r["seconds_per_image"] > 0 for r in rows[:2])
    # Without --context-weights the rows that need a model trained with context are not produced.
    assert [r["AP"] for r in rows[2:]] == [None, None] and "not produced: needs --context-weights" in result.stdout
    assert "| +box refinement |" in (tmp_path / "ablation.md").read_text() and "| +box refinement |" in result.stdout
    assert (tmp_path / "ablation.png").is_file()


@pytest.mark.parametrize("package, tool", [("detection", "train_det.py"), ("localization", "eval_loc.py")])
def test_package_help_lists_the_tools(package, tool):
    result = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, cwd=ROOT,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 0 and f"python tools/{tool}" in result.stdout
    assert "0.1.0" in result.stdout.splitlines()[0]


def test_package_index_refuses_arguments():
    """``python -m detection train_det --help`` printed the index and exited 0, having run nothing."""
    result = subprocess.run([sys.executable, "-m", "detection", "train_det", "--help"], capture_output=True,
                            text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("error: python -m detection lists its tools and takes no arguments (given: train_det "
                             "--help): run a tool itself, such as python tools/train_det.py --help\n")


def load_tool(name: str):
    """A script of tools/ imported as a module, to call its main() in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tool, argv", [
    ("train_det", ["--cfg", "configs/shapes.yaml", "solver.max_iter=5", "--resume", "solver.base_lr=-1"]),
    ("train_det", ["solver.base_lr=-1", "--resume"]),
    ("train_cls", ["--resume", "solver.max_iter=5", "--eval-only", "solver.base_lr=-1", "--weights", "w.pth"]),
    ("train_loc", ["solver.max_iter=5", "--resume", "solver.base_lr=-1"]),
    ("eval_det", ["--cfg", "configs/shapes.yaml", "solver.max_iter=5", "--weights", "w.pth", "solver.base_lr=-1"]),
    ("eval_loc", ["solver.max_iter=5", "--weights", "w.pth", "solver.base_lr=-1", "--test-mode", "dense"]),
])
def test_overrides_on_either_side_of_the_options_all_reach_the_config(tool, argv, monkeypatch):
    """The last override is out of range: the error shows it got past argparse into the config."""
    from resnet_engine.config import ConfigError

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
    with pytest.raises(ConfigError, match=r"^solver.base_lr=-1 must be a positive number$"):
        load_tool(tool).main()


def test_override_parser_collects_overrides_around_options():
    from resnet_engine.cli import config_parser

    parser = config_parser("x")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(["a=1", "--cfg", "c.yaml", "b=2", "--resume", "c.d=[1,2]"])
    assert args.overrides == ["a=1", "b=2", "c.d=[1,2]"] and args.resume and args.cfg == "c.yaml"


def test_sigterm_becomes_keyboard_interrupt_inside_the_block_only():
    import signal

    from resnet_engine.cli import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises as soon as the call returns
    assert signal.getsignal(signal.SIGTERM) is before


def test_interrupted_tool_exits_with_the_signal_code(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("import os, signal\nfrom resnet_engine.cli import run_cli, sigterm_as_interrupt\n"
                      "def main():\n    with sigterm_as_interrupt():\n        os.kill(os.getpid(), signal.SIGTERM)\n"
                      "        signal.pause()\n"
                      "run_cli(main)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=subprocess_env(),
                            timeout=60)
    assert result.returncode == 143 and result.stderr == "interrupted by SIGTERM\n"


TOOLS = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "tools")) if name.endswith(".py") and name != "__init__.py")


@pytest.mark.parametrize("name", TOOLS)
def test_every_tools_help_says_what_it_does(name, capsys, monkeypatch):
    """A sentence on what the tool does comes between the usage and the options (four tools had none: their
    description was the docstring's blank second line)."""
    tool = load_tool(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    assert exit_.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.strip() and not description.startswith(("positional arguments", "options"))


def test_train_weights_without_eval_only_are_refused():
    """--weights is read by --eval-only alone: a training run with it started from scratch without a word."""
    result = run_tool("train_det.py", "--weights", "W.pth", "solver.max_iter=1")
    assert result.returncode == 2
    assert result.stderr == ("error: --weights is read by --eval-only only: to train starting from a detector's "
                             "weights, set model.weights=W (ImageNet weights of the backbone: model.backbone.weights=W) "
                             "(python train_det.py --help lists the options)\n")
    result = run_tool("train_cls.py", "--weights", "W.pth", "solver.max_iter=1")
    assert result.returncode == 2
    assert result.stderr == ("error: --weights is read by --eval-only only: to train starting from ImageNet weights, "
                             "set model.backbone.weights=W (python train_cls.py --help lists the options)\n")


def test_the_demo_keeps_a_training_run_that_is_not_an_earlier_demos(tmp_path, monkeypatch):
    """train_det.py's default output_dir is the demo's: the demo deleted that run's checkpoints."""
    from resnet_engine.errors import UserError

    (tmp_path / "model_0000002.pth").write_bytes(b"a trained run")
    monkeypatch.setattr(sys, "argv", ["demo.py", f"output_dir={tmp_path}"])
    with pytest.raises(UserError) as error:
        load_tool("demo").main()
    assert str(error.value) == (f"{tmp_path} holds a training run that is not an earlier demo's: give the demo another "
                                "output_dir=FOLDER, or --overwrite to replace that run (its checkpoints are deleted)")
    assert (tmp_path / "model_0000002.pth").read_bytes() == b"a trained run"


def test_make_shapes_keeps_an_existing_set_unless_told(tmp_path):
    """It replaced the annotation files of a set in --root and left its other images beside them."""
    root = tmp_path / "shapes"
    assert run_tool("make_shapes.py", "--root", str(root), "--train", "3", "--val", "2").returncode == 0
    (root / "annotations" / "instances_train.json").write_text('{"note": "my own"}')
    result = run_tool("make_shapes.py", "--root", str(root), "--train", "2", "--val", "1")
    assert result.returncode == 2
    assert result.stderr == (f"error: --root {root} already holds {root}/annotations/instances_train.json: give "
                             "another --root, or --overwrite to replace its splits\n")
    assert (root / "annotations" / "instances_train.json").read_text() == '{"note": "my own"}'
    result = run_tool("make_shapes.py", "--root", str(root), "--train", "2", "--val", "1", "--overwrite")
    assert result.returncode == 0, result.stderr
    train = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert sorted(os.listdir(root / "train")) == sorted(image["file_name"] for image in train["images"])
    assert len(os.listdir(root / "train")) == 2
