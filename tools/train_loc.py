"""Train the paper's per-class RPN localizer (ILSVRC CLS-LOC), or its R-CNN stage; report the errors on val.

    python tools/train_loc.py                                    # the synthetic shapes_loc set
    python tools/train_loc.py --cfg configs/shapes_loc_rcnn.yaml # R-CNN on that run's RPN proposals (task: rcnn)
    python tools/train_loc.py --cfg configs/ilsvrc_loc_r101.yaml data.root=/data/ilsvrc
    torchrun --nproc_per_node=8 tools/train_loc.py --cfg configs/ilsvrc_loc_r101.yaml
    python tools/train_loc.py --cfg CFG --resume                 # continue the run in output_dir

Test a trained localizer (with a classifier's top-5 classes) with tools/eval_loc.py --cfg CFG --weights W.
"""

from __future__ import annotations

from resnet_engine.cli import run_cli, training_parser

DEFAULT_CFG = "configs/shapes_loc.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = training_parser(__doc__.splitlines()[0], DEFAULT_CFG)
    args = parser.parse_args()

    from localization.config import load_localization_config
    from localization.evaluation.submission import format_rows, network_name
    from localization.training import train_localizer
    from resnet_engine.distributed import is_main_process

    cfg = load_localization_config(args.cfg, args.overrides)
    metrics = train_localizer(cfg, resume=args.resume, overwrite=args.overwrite)
    if metrics and is_main_process():
        loc = metrics["loc"]
        shared = {"test_mode": cfg.test.mode, "classifier": "RPN scores",
                  "class_ranking": "the RPN's own per-class max scores (no classifier given)"}
        if cfg.task == "rcnn":
            rpn = {key[len("rpn_"):]: value for key, value in loc.items() if key.startswith("rpn_")}
            print(format_rows({**rpn, **shared, "method": "RPN", "network": "(the proposals' RPN)"}))
            print(format_rows({**loc, **shared, "method": "RPN+RCNN", "network": network_name(cfg.model.backbone)}))
        else:
            print(format_rows({**loc, **shared, "method": "RPN", "network": network_name(cfg.model.backbone)}))
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
