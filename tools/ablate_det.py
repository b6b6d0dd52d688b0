"""Evaluate a trained detector row by row as the paper's Table 9 (baseline and its improvements).

Rows: baseline, +box refinement, +context, +multi-scale testing, each from the baseline whatever the
config turns on; prints and writes a markdown table and JSON (mAP@.5, mAP@[.5,.95], s/img) beside the
paper's figures (ResNet-101, COCO val and test-dev). --weights is a model trained without global context;
the last two rows need --context-weights, the same model trained with it, and are marked not produced
without them. On a test set without annotations (test-dev) each row writes its results file for the
COCO evaluation server instead of a score.

    python tools/ablate_det.py --cfg configs/shapes.yaml --weights output/shapes/model_final.pth \
        --context-weights output/shapes_ctx/model_final.pth --out output/ablation --plot
"""

from __future__ import annotations

from resnet_engine.cli import check_output_folder, config_parser, positive_int, run_cli

DEFAULT_CFG = "configs/shapes.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = config_parser(__doc__.splitlines()[0], default_cfg=DEFAULT_CFG)
    parser.add_argument("--weights", required=True, help="weights of the model trained without global context")
    parser.add_argument("--context-weights", help="weights of the same model trained with global context")
    parser.add_argument("--scales", type=positive_int, nargs="+", help="multi-scale pyramid (default: test.scales, "
                        "or the paper's 200..1000 relative to its 600)")
    parser.add_argument("--out", default="output/ablation", help="folder for ablation.md / ablation.json")
    parser.add_argument("--plot", action="store_true", help="also write ablation.png, a bar chart of the rows")
    args = parser.parse_args()
    check_output_folder(args.out, "--out")  # written after every row's evaluation

    from detection.ablation import run_ablation

    run_ablation(args.cfg, args.overrides, args.weights, args.context_weights, args.out, args.scales, args.plot)
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
