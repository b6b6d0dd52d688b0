"""Train a Faster R-CNN detector.

    python tools/train_det.py                                   # the embedded shapes dataset
    python tools/train_det.py --cfg configs/coco_r101.yaml solver.ims_per_batch=8
    torchrun --nproc_per_node=8 tools/train_det.py --cfg configs/coco_r101.yaml
    python tools/train_det.py --cfg CFG --resume                # continue the run in output_dir
    python tools/train_det.py --cfg CFG --eval-only --weights W
"""

from __future__ import annotations

from resnet_engine.cli import run_cli, training_parser

DEFAULT_CFG = "configs/shapes.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = training_parser(__doc__.splitlines()[0], DEFAULT_CFG)
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate --weights on the test set (results in output_dir/eval_<weights file stem>/)")
    parser.add_argument("--weights", help="detector weights for --eval-only (to train from a detector's weights: "
                                          "model.weights=W)")
    args = parser.parse_args()
    if args.weights and not args.eval_only:  # a run from scratch, while the user meant to start from these
        parser.error("--weights is read by --eval-only only: to train starting from a detector's weights, set "
                     "model.weights=W (ImageNet weights of the backbone: model.backbone.weights=W)")

    from detection.config import load_detection_config

    cfg = load_detection_config(args.cfg, args.overrides)
    if args.eval_only:
        from detection.evaluation.evaluator import evaluate_weights

        if not args.weights:
            parser.error("--eval-only needs --weights")
        evaluate_weights(cfg, args.weights)
        return 0
    from detection.training import train_detector

    train_detector(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
