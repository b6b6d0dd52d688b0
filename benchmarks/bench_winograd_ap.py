"""COCO AP of a trained detector in fp32, under bf16 autocast, and with the Winograd convolutions in bf16.

    python benchmarks/bench_winograd_ap.py --weights output/bench_shapes/model_final.pth
    python benchmarks/bench_winograd_ap.py --weights W --cfg configs/shapes.yaml --every-conv

Three evaluations of the same weights on the config's test set (as `tools/eval_det.py` runs
them): `test.amp=off`, `test.amp=bf16 test.winograd_bf16=false` (autocast's bf16 convolutions)
and `test.amp=bf16` (the Winograd convolutions in bfloat16). `--every-conv` makes every stride-1
3x3 convolution a Winograd one, whatever its width and map size, so that a narrow model measures
the bf16 Winograd rounding everywhere it could apply. Results go to
benchmarks/results/winograd_ap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = {
    "fp32": ["test.amp=off"],
    "bf16, autocast's convolutions": ["test.amp=bf16", "test.winograd_bf16=false"],
    "bf16, Winograd in bf16": ["test.amp=bf16", "test.winograd_bf16=true"],
}


# Every stride-1 3x3 convolution of the model as a Winograd one, whatever its width and map size.
EVERY_CONVOLUTION = ["test.winograd_channels=[1, 1048576]", "test.winograd_min_pixels=1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="detector weights (as for tools/eval_det.py)")
    parser.add_argument("--cfg", default=os.path.join(ROOT, "configs", "shapes.yaml"))
    parser.add_argument("--every-conv", action="store_true", help="every stride-1 3x3 convolution as Winograd")
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides for all three runs")
    args = parser.parse_args()

    from detection.config import load_detection_config
    from detection.evaluation.evaluator import evaluate_weights

    rows = []
    for name, overrides in SETTINGS.items():
        cfg = load_detection_config(args.cfg, args.opts + overrides + (EVERY_CONVOLUTION if args.every_conv else []))
        metrics = evaluate_weights(cfg, args.weights, out_dir=os.path.join(ROOT, "output", "bench_winograd_ap"))
        rows.append({"setting": name, **{k: round(metrics["bbox"][k], 2) for k in ("AP", "AP50", "AP75")}})
    print("| setting | AP | AP50 | AP75 |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['AP']} | {row['AP50']} | {row['AP75']} |")
    path = os.path.join(ROOT, "benchmarks", "results", "winograd_ap.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"weights": args.weights, "cfg": args.cfg, "every_conv": args.every_conv, "rows": rows},
                  handle, indent=2)


if __name__ == "__main__":
    main()
