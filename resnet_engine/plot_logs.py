"""Curves from a run's metrics.jsonl: losses, learning rate and evaluation metrics against iteration."""

from __future__ import annotations

import json
import os

from .cli import check_output_folder
from .errors import UserError
from .logger import flatten_metrics

# Evaluation numbers worth a curve, by the name they have in metrics.jsonl (flattened with "/"); the
# classifiers' errors are matched under any section ("cls/top1_err", "test/top1_err", "val/top1_err").
EVAL_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
EVAL_NAMES = ("top1_err", "top5_err", "top1_loc_err", "top5_loc_err", "gt_known_loc_err")
# Training metrics that a model logs besides its losses, drawn thin beside the evaluation (as the
# paper's figures draw the training error thin and the test error bold).
TRAIN_METRICS = ("train_error",)


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a metrics.jsonl file; unreadable lines are skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"no metrics log at {path}: give a run's output_dir or its metrics.jsonl")
    train, evals, foreign, cut = [], [], 0, 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                cut += 1  # a line cut short by a crash (the last one); or the file is no JSON lines at all
                continue
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                foreign += 1  # not a record of a run's log: metrics.json, or another program's lines
                continue
            (evals if record.get("type") == "eval" else train).append(record)
    if (foreign or cut > 1) and not train and not evals:
        raise UserError(f"{path} is not a run's metrics log (none of its lines is a record with an iteration): "
                        "give a run's output_dir or its metrics.jsonl")
    return train, evals


def plot_run(path: str, out_dir: str | None = None) -> list[str]:
    """Write loss.png, lr.png and eval.png (when the run evaluated); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(path)
    if not train and not evals:
        raise UserError(f"{path} holds no metrics yet")
    out_dir = out_dir or (path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    check_output_folder(out_dir, "--out")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(figure, name):
        file = os.path.join(out_dir, name)
        figure.savefig(file, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(file)

    if train:
        iterations = [r["iteration"] for r in train]
        loss_names = sorted({k for r in train for k in r if k.startswith("loss") or k == "total_loss"})
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for name in loss_names:
            points = [(r["iteration"], r[name]) for r in train if name in r]
            axis.plot(*zip(*points), label=name, linewidth=2 if name == "total_loss" else 1)
        axis.set(xlabel="iteration", ylabel="loss", title="training losses")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
        save(figure, "loss.png")
        if any("lr" in r for r in train):
            figure, axis = plt.subplots(figsize=(7, 3))
            axis.plot(iterations, [r.get("lr", float("nan")) for r in train])
            axis.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
            axis.grid(alpha=0.3)
            save(figure, "lr.png")
    curves = evaluation_curves(train, evals)
    if curves:
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for label, points in curves.items():
            if label in TRAIN_METRICS:
                axis.plot(*zip(*points), linewidth=0.8, label=label)
            else:
                axis.plot(*zip(*points), marker="o", linewidth=2, label=label)
        axis.set(xlabel="iteration", ylabel="percent", title="evaluation")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
        save(figure, "eval.png")
    return written


def evaluation_curves(train: list[dict], evals: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{label: [(iteration, value), ...]} of the training metrics and the evaluation numbers worth a curve."""
    curves = {name: [(r["iteration"], r[name]) for r in train if name in r] for name in TRAIN_METRICS}
    flat = [(r["iteration"], flatten_metrics(r)) for r in evals]
    keys = sorted({k for _, values in flat for k in values
                   if k in EVAL_KEYS or k.rsplit("/", 1)[-1] in EVAL_NAMES})
    for key in keys:
        curves[key] = [(it, values[key]) for it, values in flat if key in values]
    return {label: points for label, points in curves.items() if points}
