"""Run a trained detector on image files; write predictions.json and annotated images.

    python tools/infer.py --weights output/shapes/model_final.pth datasets/shapes/val --out output/infer
    python tools/infer.py --cfg configs/coco_r101.yaml --weights W.pth a.jpg b.png --vis-thresh 0.7
"""

from __future__ import annotations

import os

from engine.cli import config_parser, run_cli

DEFAULT_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "shapes.yaml")


def main() -> int:
    parser = config_parser(__doc__.splitlines()[1], default_cfg=DEFAULT_CFG)
    parser.add_argument("--weights", required=True, help="detector weights (model_final.pth, a checkpoint, converted)")
    parser.add_argument("--inputs", nargs="+", required=True, help="image files or folders of images")
    parser.add_argument("--out", default="output/infer", help="folder for predictions.json and annotated images")
    parser.add_argument("--vis-thresh", type=float, default=0.5, help="lowest score drawn on the images")
    parser.add_argument("--no-vis", action="store_true", help="only write predictions.json")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args()

    from detection.config import load_detection_config
    from detection.infer import infer_files

    cfg = load_detection_config(args.cfg, args.overrides)
    infer_files(cfg, args.weights, args.inputs, args.out, vis_thresh=None if args.no_vis else args.vis_thresh,
                device=args.device)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    run_cli(main)
