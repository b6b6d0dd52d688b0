"""Export a trained detector, or its backbone alone, to ONNX or TorchScript.

    python tools/export.py --weights output/shapes/model_final.pth --format onnx
    python tools/export.py --cfg configs/coco_r101.yaml --weights W.pth --format torchscript --out r101.pt
    python tools/export.py --weights W.pth --format onnx --backbone-only      # feature maps only
The exported model's inputs and outputs, and what cannot be exported: docs/EXPORT.md.
"""

from __future__ import annotations

from resnet_engine.cli import check_derived_file, config_parser, run_cli

DEFAULT_CFG = "configs/shapes.yaml"  # the shipped file unless the working folder has its own
# Differences above this (pixels, scores or feature values) between the file and PyTorch are reported.
CHECK_TOLERANCE = 1e-3
MIN_MATCHED = 0.9


def main() -> int:
    parser = config_parser(__doc__.splitlines()[0], default_cfg=DEFAULT_CFG)
    parser.add_argument("--weights", required=True, help="detector weights (model_final.pth, a checkpoint, converted)")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--out", help="output file (default: next to the weights, .onnx or .torchscript.pt, "
                                      "replacing an earlier export there)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--backbone-only", action="store_true",
                        help="export the feature extractor (FPN levels, or res4 for C4) instead of the detector")
    parser.add_argument("--input-dtype", default="uint8", choices=["uint8", "float32"],
                        help="dtype of the ONNX model's image input (TorchScript takes either)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the file on a second image size and comparing it with PyTorch")
    args = parser.parse_args()
    if args.out:  # not over the weights, and over another file (model_best.pth) only on request
        check_derived_file(args.out, "--out", "model.onnx" if args.format == "onnx" else "model.torchscript.pt",
                           args.weights, "--weights", "the export would replace the trained weights", args.overwrite)

    from detection.config import load_detection_config
    from detection.export import export_detector

    cfg = load_detection_config(args.cfg, args.overrides)
    path, report = export_detector(cfg, args.weights, args.format, args.out, args.backbone_only, args.input_dtype,
                                   check=not args.no_check)
    print(f"wrote {path}")
    if report is not None:
        print(describe_check(report))
    return 0


def describe_check(report: dict) -> str:
    size = "x".join(str(s) for s in report["image_size"])
    shapes = ", ".join(f"{name} {'x'.join(str(d) for d in shape)}" for name, shape in report["output_shapes"].items())
    if "matched" in report:
        expected, actual, matched = report["expected"], report["actual"], report["matched"]
        summary = (f"{matched} of {expected} PyTorch detections found in the file's {actual} (boxes within "
                   f"{report['box_diff']:.1e} px, scores within {report['score_diff']:.1e})")
        if expected == 0:
            return (f"warning: not checked on a {size} image: PyTorch gives no detection on it (a high "
                    f"test.score_thresh?), and the file {actual}; nothing could be compared")
        # Nearly tied scores may trade places at the detections_per_img cut; more than a few, missing from
        # the file or extra in it, is an error.
        allowed = (1 - MIN_MATCHED) * expected
        good = (matched >= expected - allowed and actual - matched <= allowed
                and report["score_diff"] <= CHECK_TOLERANCE)
    else:
        summary = f"outputs {shapes}, max abs difference from PyTorch {report['max_abs_diff']:.1e}"
        good = report["max_abs_diff"] <= CHECK_TOLERANCE
    prefix = "checked" if good else "warning: the file differs from PyTorch"
    return f"{prefix} on a {size} image: {summary}"


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
