"""ILSVRC CLS-LOC localization error (the official devkit rules) of a predictions file.

    python tools/eval_loc.py --gt LOC_val_solution.csv --pred PRED --out DIR [--synsets SYNSETS]
    python tools/eval_loc.py --gt ILSVRC/Annotations/CLS-LOC/val --pred PRED --synsets SYNSETS --out DIR

SYNSETS is LOC_synset_mapping.txt or the devkit's map_clsloc.txt.

PRED is a Kaggle CSV (header "ImageId,PredictionString", "wnid xmin ymin xmax ymax" up to 5 times, best
first) or a devkit text file (one line per image in sorted name order, "label xmin ymin xmax ymax" up to 5
times, 1-based labels in synset-list order; needs --synsets). Prints the error against the number of guesses
and writes DIR/metrics.json (percent).
"""

from __future__ import annotations

import argparse

from engine.cli import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description="ILSVRC CLS-LOC localization error of a predictions file")
    scoring = parser.add_argument_group("scoring mode (a predictions file, no model)")
    scoring.add_argument("--gt", help="LOC_val_solution.csv, or a folder of devkit XML annotations")
    scoring.add_argument("--pred", help="predictions: Kaggle CSV or devkit text")
    scoring.add_argument("--synsets", help="LOC_synset_mapping.txt or map_clsloc.txt (devkit text needs it)")
    scoring.add_argument("--blacklist", help="images left out of the LOC error (devkit blacklist file)")
    parser.add_argument("--out", default=".", help="folder for metrics.json (default: .)")
    # Model mode goes here once the localizer exists: a second group with --cfg CFG --weights W that runs
    # the model on the val set, writes its predictions file and scores it with the same function.
    args = parser.parse_args()

    if not (args.gt and args.pred):
        parser.error("give --gt and --pred (scoring mode)")
    from localization.evaluate import score_files

    score_files(args.gt, args.pred, args.synsets, args.out, args.blacklist)
    return 0


if __name__ == "__main__":
    run_cli(main)
