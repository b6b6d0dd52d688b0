"""The curves plot_logs draws from a metrics.jsonl: losses, the training error and each section's errors."""

import json

from resnet_engine.plot_logs import evaluation_curves, plot_run, read_metrics


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{cut short")


def test_a_classifier_log_gives_its_training_error_and_every_section_error(tmp_path):
    write_log(tmp_path / "metrics.jsonl", [
        {"iteration": 10, "type": "train", "loss_cls": 2.0, "train_error": 80.0, "lr": 0.1},
        {"iteration": 20, "type": "train", "loss_cls": 1.5, "train_error": 60.0, "lr": 0.1},
        {"iteration": 20, "type": "eval", "val": {"top1_err": 55.0, "top5_err": 9.0},
         "test": {"top1_err": 57.5, "top5_err": 10.0, "num_images": 100}},
    ])
    train, evals = read_metrics(str(tmp_path))
    curves = evaluation_curves(train, evals)
    assert curves == {"train_error": [(10, 80.0), (20, 60.0)], "test/top1_err": [(20, 57.5)],
                      "test/top5_err": [(20, 10.0)], "val/top1_err": [(20, 55.0)], "val/top5_err": [(20, 9.0)]}
    assert sorted(p.rsplit("/", 1)[-1] for p in plot_run(str(tmp_path))) == ["eval.png", "loss.png", "lr.png"]


def test_a_detector_log_gives_its_box_ap_only(tmp_path):
    write_log(tmp_path / "metrics.jsonl", [
        {"iteration": 5, "type": "train", "loss_rpn_cls": 0.5, "lr": 0.01},
        {"iteration": 5, "type": "eval", "bbox": {"AP": 12.5, "AP50": 30.0, "APs": 1.0}},
    ])
    curves = evaluation_curves(*read_metrics(str(tmp_path)))
    assert curves == {"bbox/AP": [(5, 12.5)], "bbox/AP50": [(5, 30.0)]}


def test_a_file_that_is_not_a_runs_log_is_one_error_and_out_must_be_a_folder(tmp_path, monkeypatch):
    import pytest

    from resnet_engine.errors import UserError
    (tmp_path / "metrics.json").write_text('{"bbox": {"AP": 31.2}}\n')  # a run's final metrics, not its log
    with pytest.raises(UserError, match=r"metrics.json is not a run's metrics log \(none of its lines is a record "
                                        r"with an iteration\)"):
        plot_run(str(tmp_path / "metrics.json"))
    # Text that is no JSON at all said "holds no metrics yet", as if the run were to log some soon.
    (tmp_path / "notes.jsonl").write_text("a text file\nof two lines\n")
    with pytest.raises(UserError, match=r"notes.jsonl is not a run's metrics log"):
        plot_run(str(tmp_path / "notes.jsonl"))
    (tmp_path / "started.jsonl").write_text('{"iteration": 1, "tot')  # a first record cut short by a crash
    with pytest.raises(UserError, match=r"started.jsonl holds no metrics yet"):
        plot_run(str(tmp_path / "started.jsonl"))
    write_log(tmp_path / "metrics.jsonl", [{"iteration": 1, "total_loss": 2.0}, {"iteration": 2, "total_loss": 1.5}])
    (tmp_path / "taken").write_text("")
    with pytest.raises(UserError, match=r"--out .*taken is a file, not a folder"):
        plot_run(str(tmp_path / "metrics.jsonl"), str(tmp_path / "taken"))
    monkeypatch.chdir(tmp_path)  # a log in the working folder: the plots go next to it
    assert plot_run("metrics.jsonl") == [str(tmp_path / "loss.png")]  # no lr logged: no lr.png
