"""The degradation experiment on the embedded set: tools/degradation.py's default run (plain and residual
nets of 20 and 56 layers, configs/cifar_degradation.yaml), its four errors and its wall time.

    python benchmarks/bench_degradation.py                      # the default run
    python benchmarks/bench_degradation.py --depths 20 32 44 56
    python benchmarks/bench_degradation.py solver.ims_per_batch=128   # any override

Writes benchmarks/results/degradation.json and prints the rows for docs/BENCHMARKS.md, and whether the
deeper plain net ends with the higher training error and the deeper residual net with the lower one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OUTPUT = os.path.join(ROOT, "output", "bench_degradation")


def degradation_shows(runs: list[dict]) -> dict[str, bool]:
    """For the shallowest and the deepest depth: does depth raise the plain nets' training error (the
    degradation problem) and lower the residual nets'?"""
    by_net = {(run["depth"], run["residual"]): run["train_error"] for run in runs}
    shallow, deep = min(run["depth"] for run in runs), max(run["depth"] for run in runs)
    return {"plain_deeper_trains_worse": by_net[(deep, False)] > by_net[(shallow, False)],
            "residual_deeper_trains_better": by_net[(deep, True)] < by_net[(shallow, True)]}


def main() -> int:
    import torch

    from classification.degradation import run_degradation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    shutil.rmtree(OUTPUT, ignore_errors=True)  # a fresh run: nothing reused from an earlier one
    start = time.perf_counter()
    report = run_degradation("configs/cifar_degradation.yaml", args.overrides, args.depths, None, OUTPUT)
    wall = time.perf_counter() - start
    runs = [vars(run) for run in report.runs]
    result = {"overrides": args.overrides, "schedule": report.schedule, "runs": runs,
              "shows": degradation_shows(runs), "wall_minutes": round(wall / 60, 2),
              "threads": torch.get_num_threads(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "degradation.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(f"{report.schedule}\n\n| net | training error (%) | test error (%) |\n|---|---|---|")
    for run in runs:
        print(f"| {run['net']} | {run['train_error']:.2f} | {run['test_error']:.2f} |")
    print(f"wall time: {result['wall_minutes']} min; {result['shows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
