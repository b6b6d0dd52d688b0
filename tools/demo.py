"""The main job on the embedded default: train on the synthetic shapes dataset, evaluate, draw.

    python tools/demo.py                        # what `make demo` runs (11 to 19 minutes on 2 CPU cores)
    python tools/demo.py solver.max_iter=100    # any config override

Generates datasets/shapes/ on first use, trains configs/shapes.yaml into output/shapes/, prints the
COCO metrics of the validation set, and writes annotated validation images to output/shapes/demo/vis/.
"""

from __future__ import annotations

import os

from resnet_engine.cli import config_parser, positive_int, run_cli
from resnet_engine.errors import UserError

DEFAULT_CFG = "configs/shapes.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = config_parser(__doc__.splitlines()[0], default_cfg=DEFAULT_CFG)
    parser.add_argument("--num-images", type=positive_int, default=12, help="validation images to annotate")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a training run in output_dir that is not an earlier demo's (deletes its checkpoints)")
    args = parser.parse_args()

    from detection.config import load_detection_config
    from detection.predict_files import infer_files
    from detection.training import train_detector
    from resnet_engine.run_dir import checkpoint_files

    cfg = load_detection_config(args.cfg, args.overrides)
    demo_dir = os.path.join(cfg.output_dir, "demo")
    # The demo trains anew each time and replaces an earlier demo's run; any other run in its output_dir
    # (train_det.py's default output_dir is the demo's) is kept unless --overwrite says otherwise.
    if checkpoint_files(cfg.output_dir) and not (os.path.isdir(demo_dir) or args.overwrite):
        raise UserError(f"{cfg.output_dir} holds a training run that is not an earlier demo's: give the demo another "
                        f"output_dir=FOLDER, or --overwrite to replace that run (its checkpoints are deleted)")
    os.makedirs(demo_dir, exist_ok=True)  # marks the run as the demo's before its first checkpoint
    metrics = train_detector(cfg, overwrite=True)
    weights = os.path.join(cfg.output_dir, "model_final.pth")
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
