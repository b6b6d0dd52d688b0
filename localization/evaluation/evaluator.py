"""Evaluating a localizer, the two modes of tools/eval_loc.py: a predictions file against the ILSVRC CLS-LOC
ground truth (no model), or a trained localizer (the per-class RPN, or the R-CNN stage on it) on a config's
val set."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence

from classification.data.ilsvrc import load_ground_truth, read_blacklist, read_synsets
from classification.data.loaders import prepare_data
from resnet_engine import distributed as dist_utils
from resnet_engine.errors import UserError
from resnet_engine.files import write_json
from resnet_engine.run_dir import evaluation_dir
from resnet_engine.setup import setup_run

from ..data.predictions import EMPTY_GUESS, read_predictions
from ..ensemble import load_rcnn_ensemble, load_rpn_ensemble
from ..weights import latest_weights, trained_config, warn_untrained_values
from .ilsvrc_metric import MAX_GUESSES, format_table, localization_errors
from .rcnn_evaluation import score_rcnn
from .rpn_evaluation import score_localizer

WNID = re.compile(r"n\d+")  # WordNet ids: n01440764 (the synthetic sets' n90000001 too)


def score_files(gt: str, pred: str, synsets: str | None, out_dir: str, blacklist: str | None = None,
                max_guesses: int = MAX_GUESSES) -> dict:
    """Score ``pred`` (Kaggle CSV or devkit text) against ``gt`` (Kaggle CSV or XML folder); print the table
    and write ``out_dir/metrics.json`` (errors in percent). ``synsets`` is needed for devkit predictions."""
    synset_list = read_synsets(synsets) if synsets else None
    ground_truth = load_ground_truth(gt, synset_list)
    predictions = read_predictions(pred, synset_list, list(ground_truth))
    check_predictions_fit(pred, predictions, ground_truth)
    check_guess_labels(pred, predictions, ground_truth)
    ignored = read_blacklist(blacklist, list(ground_truth)) if blacklist else None
    errors = localization_errors(ground_truth, predictions, max_guesses, ignored)
    print(format_table(errors))
    metrics = errors.as_dict()
    path = os.path.join(out_dir, "metrics.json")
    write_json(metrics, path)
    print(f"metrics written to {path}")
    return metrics


def check_predictions_fit(path: str, predictions: dict, ground_truth: dict) -> None:
    """Predictions of none of the ground truth's images are another split's: an error, not a 100% error.
    Inverted boxes are never right under the devkit's rule (no overlap): warned of, as a sign of another
    box format."""
    if predictions and not any(image_id in ground_truth for image_id in predictions):
        raise UserError(f"{path}: none of its {len(predictions)} images is in the ground truth (e.g. "
                        f"{next(iter(predictions))}, where the ground truth has {next(iter(ground_truth))}): are "
                        f"these predictions for another split?")
    inverted = sum(1 for guesses in predictions.values() for _, (x1, y1, x2, y2) in guesses if x2 < x1 or y2 < y1)
    if inverted:
        warnings.warn(f"{path}: {inverted} guessed boxes have xmax < xmin or ymax < ymin and can never be right "
                      "(the devkit's rule): boxes are 'xmin ymin xmax ymax', not 'x y width height'", stacklevel=2)


def check_guess_labels(path: str, predictions: dict, ground_truth: dict) -> None:
    """Guesses are labelled as the ground truth is, by WNID: a label of another form (a class number in a
    Kaggle CSV) is never right. With --synsets the reader refuses it; without, every guess would silently
    count wrong. None labelled so: an error; some: a warning."""
    truth_labels = {wnid for objects in ground_truth.values() for wnid, _ in objects}
    labels = [wnid for guesses in predictions.values() for wnid, _ in guesses if wnid != EMPTY_GUESS]
    foreign = [label for label in labels if label not in truth_labels and not WNID.fullmatch(label)]
    if not foreign:
        return
    example = f"labels such as '{foreign[0]}' are not WNIDs (the ground truth's are such as {min(truth_labels)})"
    fix = ("a Kaggle CSV labels its guesses by WNID; class numbers are read from devkit text with --synsets "
           "map_clsloc.txt")
    if len(foreign) == len(labels):
        raise UserError(f"{path}: {example}, so every guess would count wrong: {fix}")
    warnings.warn(f"{path}: {len(foreign)} of {len(labels)} guesses can never be right: {example}; {fix}",
                  stacklevel=2)


def evaluate_localizer_weights(cfg, weights: str | Sequence[str] | None, classifier: str | Sequence[str] | None,
                               out_dir: str | None) -> dict:
    """Model mode: score ``weights`` (default: the run's latest checkpoint; several files: their ensemble,
    localization/ensemble.py; each built as it was trained, localization/weights.py) on the val set, the
    classes ranked by ``classifier`` (several: their averaged probabilities); write
    out_dir/loc_<mode>_submission.csv (the scored Kaggle CSV), out_dir/loc_<mode>_gt_class.csv (the GT
    class's boxes) and out_dir/metrics.json (percent, with the weights). ``out_dir`` by default:
    output_dir/eval_<weights file stem> (resnet_engine.run_dir.evaluation_dir: the run's own metrics.json
    stays)."""
    device = setup_run(cfg, save=False)
    synsets = prepare_data(cfg)
    weight_files = as_list(weights) or [latest_weights(cfg.output_dir)]
    classifiers = as_list(cfg.classifier.weights if classifier is None else classifier)
    for path in classifiers:
        if not os.path.isfile(path):
            raise UserError(f"classifier weights not found: {path} (train one with tools/train_cls.py, or "
                            f"leave classifier.weights empty to rank classes by the RPN's scores)")
    out_dir = out_dir or evaluation_dir(cfg.output_dir, weight_files)
    if cfg.task == "rcnn":
        model, rpn, rpn_cfg, rpn_files = load_rcnn_ensemble(cfg, weight_files, synsets)
    else:
        model = load_rpn_ensemble(cfg, weight_files, synsets)
    # The RPN's 1-crop view (input.crop) and the table's network are the (first) network's, as trained;
    # read once the file is known to be the config's stage.
    scoring = trained_config(cfg, weight_files[0])
    warn_untrained_values(cfg, scoring, weight_files[0])
    if cfg.task == "rcnn":
        metrics = score_rcnn(model.to(device), rpn.to(device), rpn_cfg, scoring, synsets, classifiers, out_dir)
        metrics["rpn_weights"] = rpn_files[0] if len(rpn_files) == 1 else rpn_files
    else:
        metrics = score_localizer(model.to(device), scoring, synsets, classifiers, out_dir)
    metrics["weights"] = weight_files[0] if len(weight_files) == 1 else weight_files
    if dist_utils.is_main_process():
        write_json(metrics, os.path.join(out_dir, "metrics.json"))
    return metrics


def as_list(files: str | Sequence[str] | None) -> list[str]:
    """One file name, several, or none (None or "") as a list."""
    if not files:
        return []
    return [files] if isinstance(files, str) else list(files)
