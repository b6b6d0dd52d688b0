"""The paper's Table 9 for any trained model: baseline, +box refinement, +context, +multi-scale testing.

Rows are cumulative, as in the paper. "+box refinement" switches on refinement and box voting;
"+context" evaluates the weights of a model trained with ``model.roi_head.global_context=true``
(with refinement); "+multi-scale" adds multi-scale testing to the row before it.
"""

from __future__ import annotations

import json
import os

from .config import load_detection_config
from .evaluation.evaluator import evaluate_weights

PAPER_SCALES = (200, 400, 600, 800, 1000)  # for the paper's base scale of 600
PAPER_BASE_SCALE = 600
REFINEMENT = ["test.box_refinement=true", "test.box_voting=true"]
PAPER_ROWS = {  # the paper's COCO val numbers (mAP@.5, mAP@[.5,.95]), ResNet-101 [Table 9]
    "baseline": (48.4, 27.2), "+box refinement": (49.9, 29.9), "+context": (51.1, 30.0),
    "+multi-scale": (53.8, 32.5),
}


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
    """(name, weights, overrides) of each row to evaluate."""
    multiscale = pyramid_overrides(cfg, scales)
    rows = [("baseline", weights, []), ("+box refinement", weights, REFINEMENT)]
    if context_weights:
        context = ["model.roi_head.global_context=true"]
        rows += [("+context", context_weights, context + REFINEMENT),
                 ("+multi-scale", context_weights, context + REFINEMENT + multiscale)]
    else:
        rows.append(("+multi-scale", weights, REFINEMENT + multiscale))
    return rows


def run_ablation(cfg_path: str | None, overrides: list[str], weights: str, context_weights: str | None,
                 out_dir: str, scales: list[int] | None = None, plot: bool = False) -> list[dict]:
    base_cfg = load_detection_config(cfg_path, overrides)
    results = []
    for name, row_weights, row_overrides in ablation_rows(base_cfg, weights, context_weights, scales):
        cfg = load_detection_config(cfg_path, list(overrides) + row_overrides)
        row_dir = os.path.join(out_dir, name.strip("+").replace(" ", "_").replace("-", "_"))
        print(f"\n== {name}: {' '.join(row_overrides) or 'as configured'}")
        metrics = evaluate_weights(cfg, row_weights, row_dir)
        results.append({"row": name, "weights": row_weights, "overrides": row_overrides,
                        "AP50": round(metrics["bbox"]["AP50"], 2), "AP": round(metrics["bbox"]["AP"], 2),
                        "seconds_per_image": metrics.get("seconds_per_image")})
    write_report(results, out_dir)
    if plot:
        plot_ablation(results, os.path.join(out_dir, "ablation.png"))
    return results


def markdown_table(results: list[dict]) -> str:
    lines = ["| row | mAP@.5 | mAP@[.5,.95] | s/img | paper (R101, COCO val) |", "|---|---|---|---|---|"]
    for row in results:
        paper = PAPER_ROWS.get(row["row"])
        paper_text = f"{paper[0]} / {paper[1]}" if paper else ""
        seconds = row["seconds_per_image"]
        lines.append(f"| {row['row']} | {row['AP50']:.1f} | {row['AP']:.1f} | "
                     f"{seconds:.3f} | {paper_text} |" if seconds is not None else
                     f"| {row['row']} | {row['AP50']:.1f} | {row['AP']:.1f} | | {paper_text} |")
    return "\n".join(lines)


def write_report(results: list[dict], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    table = markdown_table(results)
    print("\n" + table)
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
