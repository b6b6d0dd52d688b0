"""Train a classifier: ImageNet (ILSVRC CLS-LOC) or CIFAR-10/100 with the paper's recipes; report top-1/top-5 error.

    python tools/train_cls.py                                   # the synthetic shapes_loc set
    python tools/train_cls.py --cfg configs/ilsvrc_cls_r101.yaml data.root=/data/ilsvrc
    torchrun --nproc_per_node=8 tools/train_cls.py --cfg configs/ilsvrc_cls_r101.yaml
    python tools/train_cls.py --cfg configs/cifar_synthetic.yaml        # the embedded CIFAR default, minutes on a CPU
    python tools/train_cls.py --cfg configs/cifar10_resnet56.yaml data.root=/data/cifar   # DIR/cifar-10-batches-bin or -py
    python tools/train_cls.py --cfg CFG --resume                # continue the run in output_dir
    python tools/train_cls.py --cfg CFG --eval-only --weights W test.mode=dense
"""

from __future__ import annotations

from resnet_engine.cli import run_cli, training_parser

DEFAULT_CFG = "configs/cls_shapes.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = training_parser(__doc__.splitlines()[0], DEFAULT_CFG)
    parser.add_argument("--eval-only", action="store_true", help="only test --weights on the test sets")
    parser.add_argument("--weights", help="classifier weights for --eval-only (a checkpoint, a state dict, "
                                          "or torchvision:IMAGENET1K_V2; CIFAR: a checkpoint of this tool)")
    args = parser.parse_args()
    if args.eval_only and not args.weights:
        parser.error("--eval-only needs --weights")
    if args.weights and not args.eval_only:  # a run from scratch, while the user meant to start from these
        parser.error("--weights is read by --eval-only only: to train starting from ImageNet weights, set "
                     "model.backbone.weights=W")

    from classification.config import load_classification_config
    from classification.evaluation import evaluate_weights, format_metrics
    from classification.training import train_classifier
    from resnet_engine.distributed import is_main_process

    cfg = load_classification_config(args.cfg, args.overrides)
    if args.eval_only:
        metrics = evaluate_weights(cfg, args.weights)
    else:
        metrics = train_classifier(cfg, resume=args.resume, overwrite=args.overwrite).metrics
    if metrics and is_main_process():
        print(format_metrics(metrics))
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
