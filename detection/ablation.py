"""The paper's Table 9 for any trained model: baseline, +box refinement, +context, +multi-scale testing.

Rows are cumulative, as in the paper. Each row starts from the baseline (no global context, no
refinement, no voting, one scale, no flip), whatever the config turns on, and switches on exactly its
improvements: "+box refinement" refinement and box voting; "+context" the weights of the same model
trained with ``model.roi_head.global_context=true``, with refinement; "+multi-scale" multi-scale
testing on top of "+context". Without those weights the last two rows cannot be measured, and the
table says so rather than showing a row without context next to the paper's.
"""

from __future__ import annotations

import json
import os

from resnet_engine.errors import UserError

from .config import load_detection_config
from .evaluation.evaluator import evaluate_weights
from .weights import read_detector_weights

PAPER_SCALES = (200, 400, 600, 800, 1000)  # for the paper's base scale of 600
PAPER_BASE_SCALE = 600
# Every improvement off: the baseline row, and the start of every other row.
BASELINE = ["model.roi_head.global_context=false", "test.box_refinement=false", "test.box_voting=false",
            "test.scales=null", "test.flip=false"]
REFINEMENT = ["test.box_refinement=true", "test.box_voting=true"]
CONTEXT = ["model.roi_head.global_context=true"]
CONTEXT_ROWS = ("+context", "+multi-scale")
NEEDS_CONTEXT_WEIGHTS = ("not produced: needs --context-weights, the same model trained with "
                         "model.roi_head.global_context=true")
# The paper's figures, ResNet-101 [Table 9]: (mAP@.5, mAP@[.5,.95]) on COCO val (trained on train) and
# on test-dev (trained on trainval, scored by the evaluation server; no baseline or refinement figures).
PAPER_VAL = {"baseline": (48.4, 27.2), "+box refinement": (49.9, 29.9), "+context": (51.1, 30.0),
             "+multi-scale": (53.8, 32.5)}
PAPER_TEST_DEV = {"+context": (53.3, 32.2), "+multi-scale": (55.7, 34.9)}


def pyramid_overrides(cfg, scales: list[int] | None) -> list[str]:
    """The multi-scale keys: the given scales, the config's, or the paper's pyramid relative to its 600."""
    base = cfg.input.min_size_test
    ratio = base / PAPER_BASE_SCALE
    chosen = scales or (list(cfg.test.scales) if cfg.test.scales else [round(s * ratio) for s in PAPER_SCALES])
    overrides = [f"test.scales=[{','.join(str(int(s)) for s in chosen)}]"]
    if cfg.test.canonical_size == 224.0 and ratio != 1:
        # The canonical RoI side scales with the pyramid, so that a dataset tested at another base
        # scale chooses the same relative scales as the paper's.
        overrides.append(f"test.canonical_size={224.0 * ratio:.1f}")
    return overrides


def ablation_rows(cfg, weights: str, context_weights: str | None, scales: list[int] | None):
    """(name, weights, overrides) of each row to evaluate, each from the baseline; weights None: the row
    cannot be produced."""
    rows = [("baseline", weights, BASELINE), ("+box refinement", weights, BASELINE + REFINEMENT)]
    context = BASELINE + CONTEXT + REFINEMENT
    rows += [("+context", context_weights, context),
             ("+multi-scale", context_weights, context + pyramid_overrides(cfg, scales))]
    return rows


def trained_with_global_context(weights: str) -> bool | None:
    """Whether a detector file was trained with global context: its classifier then reads twice the box
    head's output width. None when the file does not show it (no box head layer with weights)."""
    state, _ = read_detector_weights(weights)
    head_widths = [value.shape[0] for key, value in state.items()
                   if key.startswith("roi_heads.box_head.") and key.endswith("weight") and value.dim() >= 2]
    classifier = state.get("roi_heads.predictor.cls_score.weight")
    if not head_widths or classifier is None:
        return None
    return classifier.shape[1] == 2 * head_widths[-1]


def check_ablation_weights(weights: str, context_weights: str | None) -> None:
    """--weights must be the model without context and --context-weights the one with it."""
    if trained_with_global_context(weights):
        raise UserError(f"--weights {weights} was trained with global context: give the model trained without it "
                        f"as --weights (the baseline rows) and this one as --context-weights")
    if context_weights and trained_with_global_context(context_weights) is False:
        raise UserError(f"--context-weights {context_weights} was trained without global context: give a model "
                        f"trained with model.roi_head.global_context=true, or leave the option out")


def run_ablation(cfg_path: str | None, overrides: list[str], weights: str, context_weights: str | None,
                 out_dir: str, scales: list[int] | None = None, plot: bool = False) -> list[dict]:
    base_cfg = load_detection_config(cfg_path, overrides)
    check_ablation_weights(weights, context_weights)
    results = []
    for name, row_weights, row_overrides in ablation_rows(base_cfg, weights, context_weights, scales):
        if row_weights is None:
            print(f"\n== {name}: {NEEDS_CONTEXT_WEIGHTS}")
            results.append({"row": name, "weights": None, "overrides": row_overrides, "AP50": None, "AP": None,
                            "seconds_per_image": None, "note": NEEDS_CONTEXT_WEIGHTS})
            continue
        cfg = load_detection_config(cfg_path, list(overrides) + row_overrides)
        row_dir = os.path.join(out_dir, name.strip("+").replace(" ", "_").replace("-", "_"))
        print(f"\n== {name}: {' '.join(row_overrides)}")
        results.append(measured_row(name, row_weights, row_overrides, evaluate_weights(cfg, row_weights, row_dir)))
    write_report(results, out_dir)
    measured = [row for row in results if row["AP"] is not None]
    if plot and measured:
        plot_ablation(measured, os.path.join(out_dir, "ablation.png"))
    return results


def measured_row(name: str, weights: str, overrides: list[str], metrics: dict) -> dict:
    """One row of the report from evaluate_weights' metrics; a test set without annotations (test-dev) gives
    a results file for the evaluation server instead of AP."""
    row = {"row": name, "weights": weights, "overrides": overrides, "AP50": None, "AP": None,
           "seconds_per_image": metrics.get("seconds_per_image")}
    if "bbox" in metrics:
        row.update(AP50=round(metrics["bbox"]["AP50"], 2), AP=round(metrics["bbox"]["AP"], 2))
    elif "results_file" in metrics:
        row.update(results_file=metrics["results_file"],
                   note=f"scored by the COCO evaluation server: upload {metrics['results_file']}")
    else:
        raise UserError("Table 9 is scored with COCO box AP, which this config's evaluation does not give: "
                        "test the model on a COCO-scored set")
    return row


def figures(pair: tuple[float, float] | None) -> str:
    return f"{pair[0]} / {pair[1]}" if pair else "-"


def markdown_table(results: list[dict]) -> str:
    lines = ["| row | mAP@.5 | mAP@[.5,.95] | s/img | paper, COCO val | paper, test-dev |", "|---|---|---|---|---|---|"]
    for row in results:
        paper = f"{figures(PAPER_VAL.get(row['row']))} | {figures(PAPER_TEST_DEV.get(row['row']))}"
        if row["AP"] is None:
            lines.append(f"| {row['row']} | {row['note']} | | | {paper} |")
            continue
        seconds = "" if row["seconds_per_image"] is None else f"{row['seconds_per_image']:.3f}"
        lines.append(f"| {row['row']} | {row['AP50']:.1f} | {row['AP']:.1f} | {seconds} | {paper} |")
    return "\n".join(lines)


def write_report(results: list[dict], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    table = markdown_table(results)
    print("\nTable 9 (paper: ResNet-101, mAP@.5 / mAP@[.5,.95]; val trained on COCO 2014 train, test-dev on "
          "trainval)\n" + table)
    with open(os.path.join(out_dir, "ablation.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    with open(os.path.join(out_dir, "ablation.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)


def plot_ablation(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["row"] for r in results]
    positions = range(len(names))
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar([p - 0.2 for p in positions], [r["AP50"] for r in results], width=0.4, label="mAP@.5")
    axis.bar([p + 0.2 for p in positions], [r["AP"] for r in results], width=0.4, label="mAP@[.5,.95]")
    axis.set_xticks(list(positions), names)
    axis.set(ylabel="percent", title="detection ablation")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
