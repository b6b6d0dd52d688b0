"""ILSVRC CLS-LOC localization error (the official devkit rules): of a predictions file, or of a trained localizer.

Scoring mode (a predictions file, no model):

    python tools/eval_loc.py --gt LOC_val_solution.csv --pred PRED --out DIR [--synsets SYNSETS]
    python tools/eval_loc.py --gt ILSVRC/Annotations/CLS-LOC/val --pred PRED --synsets SYNSETS --out DIR

SYNSETS is LOC_synset_mapping.txt or the devkit's map_clsloc.txt.

PRED is a Kaggle CSV (header "ImageId,PredictionString", "wnid xmin ymin xmax ymax" up to 5 times, best
first) or a devkit text file (one line per image in sorted name order, "label xmin ymin xmax ymax" up to 5
times, 1-based labels in synset-list order; needs --synsets). Prints the error against the number of guesses
and writes DIR/metrics.json (percent).

Model mode (the per-class RPN of tools/train_loc.py on the config's val set; with a task=rcnn config such as
configs/shapes_loc_rcnn.yaml, the R-CNN stage re-scoring the proposals of rcnn.rpn_weights):

    python tools/eval_loc.py                                     # the latest run of configs/shapes_loc.yaml
    python tools/eval_loc.py --cfg CFG --weights W [--classifier-weights C] [--test-mode 1crop|dense] [k=v ...]
    python tools/eval_loc.py --cfg CFG --weights W1 --weights W2 --classifier-weights C1 --classifier-weights C2

Prints the paper's table row (LOC error on GT class, top-5 LOC error on the predicted classes), writes the
scored submission DIR/loc_<mode>_submission.csv (Kaggle CSV), the GT class's boxes DIR/loc_<mode>_gt_class.csv
(scoring mode gives its top-1 LOC error = the LOC error on GT class) and DIR/metrics.json (percent, with
the weights); DIR is --out, else eval_<weights file stem>/ (eval_ensemble/ for several --weights) in the
config's output_dir, so that the run's own metrics.json, the final evaluation of its training, stays.
Without a classifier the RPN's own per-class scores rank the classes. With task=rcnn the rows are "RPN"
(the proposals' RPN alone, its one-box-per-class rule) and "RPN+RCNN", on the same images and classes;
the files are DIR/loc_rcnn_<mode>_submission.csv and _gt_class.csv.

Several --weights run as one ensemble (the paper's Tables 13-14 "ensemble" rows; localization/ensemble.py):
per-class RPNs average their probabilities and boxes anchor by anchor; R-CNNs score the proposals of the
ensemble of their own RPNs (each one's rcnn.rpn_weights) and average. Several --classifier-weights rank the
classes by their averaged softmax probabilities.

Either mode: --plots PLOTS draws the first images with their GT boxes (green) and ranked guesses (blue
right, red wrong) into PLOTS; scoring mode also needs --images (the folder of the val images).
"""

from __future__ import annotations

import argparse
import os

from resnet_engine.cli import OverridesParser, check_output_folder, run_cli

DEFAULT_CFG = "configs/shapes_loc.yaml"  # the shipped file unless the working folder has its own


def build_parser() -> argparse.ArgumentParser:
    parser = OverridesParser(description=__doc__.splitlines()[0])
    scoring = parser.add_argument_group("scoring mode (a predictions file, no model)")
    scoring.add_argument("--gt", help="LOC_val_solution.csv, or a folder of devkit XML annotations")
    scoring.add_argument("--pred", help="predictions: Kaggle CSV or devkit text")
    scoring.add_argument("--synsets", help="the devkit's map_clsloc.txt, whose numbers devkit text's labels are "
                                           "(LOC_synset_mapping.txt numbers the classes by line: another order)")
    scoring.add_argument("--blacklist", help="images left out of the LOC error (devkit blacklist file)")
    model = parser.add_argument_group("model mode (a trained localizer on the config's val set)")
    model.add_argument("--cfg", help=f"localization config (default: {DEFAULT_CFG})")
    model.add_argument("--weights", action="append",
                       help="localizer checkpoint (default: the latest one in the config's output_dir); repeat it "
                            "for an ensemble of several localizers")
    model.add_argument("--classifier-weights", action="append",
                       help="classifier checkpoint of tools/train_cls.py whose top-5 classes get the RPN's boxes "
                            "(default: classifier.weights); repeat it for an ensemble of several classifiers")
    model.add_argument("--test-mode", choices=("1crop", "dense"), help="localizer views (default: test.mode)")
    model.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (model mode)")
    parser.add_argument("--out", help="folder for metrics.json (default: scoring mode .; model mode "
                                      "output_dir/eval_<weights file stem>)")
    parser.add_argument("--plots", metavar="DIR", help="also draw a few images with their GT boxes and ranked "
                        "guesses (blue: right, red: wrong) into DIR")
    scoring.add_argument("--images", help="scoring mode with --plots: the folder of the val images (<id>.JPEG)")
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.gt or args.pred:
        if not (args.gt and args.pred):
            parser.error("give --gt and --pred (scoring mode)")
        if args.cfg or args.weights or args.classifier_weights or args.test_mode or args.overrides:
            parser.error("--gt/--pred (scoring mode) do not mix with --cfg, --weights, --classifier-weights, "
                         "--test-mode or overrides (model mode)")
        if args.plots and not args.images:
            parser.error("--plots in scoring mode needs --images (the folder of the val images)")
        from localization.evaluation.evaluator import score_files

        check_output_folders(args.out or ".", args.plots)
        score_files(args.gt, args.pred, args.synsets, args.out or ".", args.blacklist)
        if args.plots:
            plot_files(args.gt, args.pred, args.synsets, args.images, args.plots)
        return 0
    return run_model_mode(args)


def plot_files(gt: str, pred: str, synsets_path: str | None, images: str, plots_dir: str) -> None:
    from classification.data.ilsvrc import load_ground_truth, read_synsets
    from localization.data.predictions import read_predictions
    from localization.visualize import image_finder, write_plots

    synsets = read_synsets(synsets_path) if synsets_path else None
    truth = load_ground_truth(gt, synsets)
    predictions = read_predictions(pred, synsets, sorted(truth))
    names = dict(zip(synsets.wnids, synsets.names)) if synsets else None
    written = write_plots(truth, predictions, image_finder(images), plots_dir, names=names)
    print(f"{len(written)} pictures written to {plots_dir}" if written else
          f"warning: no image of the ground truth found in {images}; no pictures written")


def run_model_mode(args) -> int:
    from localization.config import load_localization_config
    from localization.evaluation.evaluator import evaluate_localizer_weights
    from localization.evaluation.submission import format_rows
    from localization.weights import latest_weights
    from resnet_engine.distributed import is_main_process
    from resnet_engine.run_dir import evaluation_dir

    overrides = list(args.overrides) + ([f"test.mode={args.test_mode}"] if args.test_mode else [])
    cfg = load_localization_config(args.cfg or DEFAULT_CFG, overrides)
    weights = args.weights or [latest_weights(cfg.output_dir)]
    out_dir = args.out or evaluation_dir(cfg.output_dir, weights)
    check_output_folders(out_dir, args.plots)
    metrics = evaluate_localizer_weights(cfg, weights, args.classifier_weights, out_dir)
    if is_main_process():
        if "rpn" in metrics:  # task=rcnn: the proposals' RPN alone first, on the same images and ranking
            print(format_rows(metrics["rpn"]))
        print(format_rows(metrics))
        print(f"submission written to {metrics['submission']} (GT-class boxes: {metrics['gt_class_boxes']})")
        print(f"metrics written to {os.path.join(out_dir, 'metrics.json')}")
        if args.plots:
            root = cfg.data.root
            plot_files(os.path.join(root, "LOC_val_solution.csv"), metrics["submission"],
                       os.path.join(root, "LOC_synset_mapping.txt"), os.path.join(root, "ILSVRC", "Data", "CLS-LOC", "val"),
                       args.plots)
    return 0


def check_output_folders(out_dir: str, plots_dir: str | None) -> None:
    """Before any work: the results are written at the end, after the whole evaluation."""
    check_output_folder(out_dir, "--out")
    if plots_dir:
        check_output_folder(plots_dir, "--plots")


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
