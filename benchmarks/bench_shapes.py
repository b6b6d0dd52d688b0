"""Accuracy of the embedded recipe: train configs/shapes.yaml, evaluate along the way, report the
learning curve against training minutes (evaluation time excluded).

    python benchmarks/bench_shapes.py                       # the recipe as shipped
    python benchmarks/bench_shapes.py solver.max_iter=400   # any override

Writes benchmarks/results/shapes.json and prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def learning_curve(output_dir: str) -> list[dict]:
    from resnet_engine.plot_logs import read_metrics

    _, evals = read_metrics(output_dir)
    return [{"iteration": r["iteration"], "train_minutes": round(r.get("train_time", 0) / 60, 2),
             "AP": round(r["bbox"]["AP"], 1), "AP50": round(r["bbox"]["AP50"], 1)} for r in evals if "bbox" in r]


def main() -> None:
    import torch

    from detection.config import load_detection_config
    from detection.training import train_detector

    overrides = sys.argv[1:]
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"),
                                ["output_dir=output/bench_shapes", "test.eval_period=250", *overrides])
    shutil.rmtree(cfg.output_dir, ignore_errors=True)  # a fresh run: no earlier log in the curve
    start = time.perf_counter()
    final = train_detector(cfg)
    wall = time.perf_counter() - start
    curve = learning_curve(cfg.output_dir)
    result = {"overrides": overrides, "final": final.get("bbox", {}), "curve": curve,
              "wall_minutes": round(wall / 60, 2), "threads": torch.get_num_threads(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "shapes.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print("| iteration | training minutes | AP | AP50 |\n|---|---|---|---|")
    for point in curve:
        print(f"| {point['iteration']} | {point['train_minutes']} | {point['AP']} | {point['AP50']} |")
    print(f"wall time including evaluations: {result['wall_minutes']} min")


if __name__ == "__main__":
    main()
