"""Training throughput and memory of a detection config under each solver.amp, on the synthetic shapes data.

    python benchmarks/bench_train.py --cfg configs/coco_r50.yaml --device cuda --amp off bf16 fp16
    python benchmarks/bench_train.py --cfg configs/coco_r50_fpn.yaml --device cuda --torchrun

The config's model, input sizes and batch are kept; its data is replaced by the shapes set (generated
on first use; its images are upscaled to the config's sizes) and its ImageNet weights by random ones,
so that it runs offline; the learning rate is made tiny so that random weights cannot diverge in
the few steps timed (the work per step does not depend on it). Each setting is a separate ``tools/train_det.py`` process (``torchrun
--nproc_per_node=1`` with --torchrun); s/iter is the median of the logged windows after the first,
and memory is torch.cuda.max_memory_allocated. Results go to benchmarks/results/train_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES_DATA = [
    "data.synthetic=shapes",
    "data.train.ann_file=datasets/shapes/annotations/instances_train.json",
    "data.train.img_dir=datasets/shapes/train",
    "data.test.ann_file=datasets/shapes/annotations/instances_val.json",
    "data.test.img_dir=datasets/shapes/val",
]


def run_one(cfg: str, device: str, amp: str, iters: int, torchrun: bool, extra: list[str], out_dir: str) -> dict:
    log_period = max(iters // 6, 1)
    overrides = SHAPES_DATA + [
        f"device={device}", f"solver.amp={amp}", f"solver.max_iter={iters}", f"solver.steps=[{iters}]",
        "solver.warmup_iters=0", "solver.base_lr=1e-6", "solver.checkpoint_period=0", f"solver.log_period={log_period}",
        "test.eval_period=0", "test.max_images=4", "model.backbone.weights=null", f"output_dir={out_dir}", *extra]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone"] if torchrun \
        else [sys.executable]
    command = [*launcher, os.path.join(ROOT, "tools", "train_det.py"), "--cfg", cfg, *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                filter(None, [ROOT, os.environ.get("PYTHONPATH")]))})
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    train = [r for r in records if "time_per_iter" in r]
    steady = [r["time_per_iter"] for r in train[1:]] or [r["time_per_iter"] for r in train]
    row = {"s_iter": round(statistics.median(steady), 4)}
    if "max_mem_mb" in train[-1]:
        row["max_mem_mb"] = train[-1]["max_mem_mb"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="+", default=["configs/coco_r50.yaml"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--amp", nargs="+", choices=["off", "bf16", "fp16"], default=["off", "bf16", "fp16"])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--torchrun", action="store_true", help="launch through torchrun --nproc_per_node=1")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    rows = []
    print("| config | launch | amp | s/iter | img/s | max memory |\n|---|---|---|---|---|---|", flush=True)
    for cfg in args.cfg:
        batch = _batch_size(cfg, args.overrides)
        for amp in args.amp:
            with tempfile.TemporaryDirectory() as out_dir:
                row = run_one(cfg, args.device, amp, args.iters, args.torchrun, args.overrides, out_dir)
            row = {"config": cfg, "amp": amp, "torchrun": args.torchrun, "ims_per_batch": batch, **row}
            rows.append(row)
            if "error" in row:
                print(f"| {cfg} | | {amp} | error: {row['error']} | | |", flush=True)
                continue
            memory = f"{row['max_mem_mb'] / 1024:.1f} GiB" if "max_mem_mb" in row else "-"
            print(f"| {cfg} | {'torchrun' if args.torchrun else 'python'} | {amp} | {row['s_iter']} | "
                  f"{batch / row['s_iter']:.1f} | {memory} |", flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", f"train_{args.device}.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "overrides": args.overrides}, f, indent=2)
    return 1 if any("error" in r for r in rows) else 0


def _batch_size(cfg: str, overrides: list[str]) -> int:
    sys.path.insert(0, ROOT)
    from detection.config import load_detection_config

    return load_detection_config(os.path.join(ROOT, cfg), overrides).solver.ims_per_batch


if __name__ == "__main__":
    sys.exit(main())
