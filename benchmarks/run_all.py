"""`make bench`: every benchmark, one after the other (about half an hour on 2 CPU cores).

    python benchmarks/run_all.py            # all
    python benchmarks/run_all.py shapes     # by name: data, det, shapes, winograd_ap, degradation, cifar,
                                            # ilsvrc_cache, dataset_memory, coco_eval, step_ops

Run on their own: bench_train.py (s/iter and memory per solver.amp, for GPUs), bench_tv_scratch.py
(the shapes recipe against torchvision trained from scratch for the same time, about 25 minutes),
and on a GPU gpu_checks.sh (`make bench-gpu`: the CUDA tests and the training steps against
torchvision in fp32, bf16, with the gather RoIAlign and with CUDA graphs).
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = {"data": "bench_data.py", "det": "bench_det.py", "shapes": "bench_shapes.py",
              "winograd_ap": "bench_winograd_ap.py", "degradation": "bench_degradation.py",
              "cifar": "bench_cifar.py", "ilsvrc_cache": "bench_ilsvrc_cache.py",
              "dataset_memory": "bench_dataset_memory.py", "coco_eval": "bench_coco_eval.py",
              "step_ops": "bench_step_ops.py"}
# The training rows of docs/BENCHMARKS.md use our training speed switches (both off by default);
# the bf16 AP check evaluates the model that bench_shapes.py trains.
ARGUMENTS = {"det": ["--train-opts", "solver.channels_last=true", "solver.winograd=true"],
             "winograd_ap": ["--weights", os.path.join(os.path.dirname(HERE), "output", "bench_shapes", "model_final.pth"),
                             "--every-conv"]}


def main() -> int:
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark {unknown[0]}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        command = [sys.executable, os.path.join(HERE, BENCHMARKS[name]), *ARGUMENTS.get(name, [])]
        if subprocess.call(command) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
