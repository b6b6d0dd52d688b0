"""The main job on the embedded default: train on the synthetic shapes dataset, evaluate, draw.

    python tools/demo.py                        # what `make demo` runs (11 to 19 minutes on 2 CPU cores)
    python tools/demo.py solver.max_iter=100    # any config override

Generates datasets/shapes/ on first use, trains configs/shapes.yaml into output/shapes/, prints the
COCO metrics of the validation set, and writes annotated validation images to output/shapes/demo/vis/.
"""

from __future__ import annotations

import os

from resnet_engine.cli import config_parser, positive_int, run_cli

DEFAULT_CFG = "configs/shapes.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = config_parser(__doc__.splitlines()[0], default_cfg=DEFAULT_CFG)
    parser.add_argument("--num-images", type=positive_int, default=12, help="validation images to annotate")
    args = parser.parse_args()

    from detection.config import load_detection_config
    from detection.predict_files import infer_files
    from detection.training import train_detector

    cfg = load_detection_config(args.cfg, args.overrides)
    # The demo trains anew each time: an earlier demo run in its output_dir is replaced.
    metrics = train_detector(cfg, overwrite=True)
    weights = os.path.join(cfg.output_dir, "model_final.pth")
    demo_dir = os.path.join(cfg.output_dir, "demo")
    infer_files(cfg, weights, [cfg.data.test.img_dir], demo_dir, vis_thresh=0.5, max_images=args.num_images)
    bbox = (metrics or {}).get("bbox", {})
    if bbox:
        print(f"shapes val: AP {bbox['AP']:.1f}  AP50 {bbox['AP50']:.1f}  AP75 {bbox['AP75']:.1f}")
    print(f"weights: {weights}\nannotated images: {os.path.join(demo_dir, 'vis')}")
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
