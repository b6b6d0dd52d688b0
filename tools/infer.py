"""Run a trained detector on image files; write predictions.json and annotated images.

    python tools/infer.py --weights output/shapes/model_final.pth --inputs datasets/shapes/val --out output/infer
    python tools/infer.py --cfg configs/coco_r101.yaml --weights W.pth --inputs a.jpg b.png --vis-thresh 0.7

predictions.json grows as the images are processed (a stopped run keeps what it made); annotated
images go to OUT/vis/ under the inputs' paths relative to their common folder. Images that cannot be
read, or are too thin to detect in, are skipped and counted.
"""

from __future__ import annotations

import os

from resnet_engine.cli import (
    check_output_folder,
    config_parser,
    looks_like_override,
    run_cli,
    sigterm_as_interrupt,
)

DEFAULT_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "shapes.yaml")


def main() -> int:
    parser = config_parser(__doc__.splitlines()[1], default_cfg=DEFAULT_CFG)
    parser.add_argument("--weights", required=True, help="detector weights (model_final.pth, a checkpoint, converted)")
    parser.add_argument("--inputs", nargs="+", required=True, help="image files or folders of images")
    parser.add_argument("--out", default="output/infer", help="folder for predictions.json and annotated images")
    parser.add_argument("--vis-thresh", type=float, default=0.5, help="lowest score drawn on the images")
    parser.add_argument("--no-vis", action="store_true", help="only write predictions.json")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    # --inputs takes every word after it: overrides written after the inputs are overrides all the same.
    args.overrides += [item for item in args.inputs if looks_like_override(item)]
    args.inputs = [item for item in args.inputs if not looks_like_override(item)]
    if not args.inputs:
        parser.error("--inputs needs image files or folders")
    check_output_folder(args.out, "--out")

    from detection.config import load_detection_config
    from detection.predict_files import infer_files

    cfg = load_detection_config(args.cfg, args.overrides)
    with sigterm_as_interrupt():
        infer_files(cfg, args.weights, args.inputs, args.out, vis_thresh=None if args.no_vis else args.vis_thresh,
                    device=args.device or default_device())
    return 0


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    run_cli(main)
