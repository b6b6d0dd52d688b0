"""Scoring mode: a localization predictions file against the ILSVRC CLS-LOC ground truth, no model."""

from __future__ import annotations

import json
import os

from resnet_engine.errors import UserError

from .data.ilsvrc import (
    Annotations,
    Synsets,
    numbered_lines,
    read_kaggle_solution,
    read_synsets,
    read_xml_dir,
)
from .data.predictions import read_predictions
from .metrics import MAX_GUESSES, LocalizationErrors, localization_errors


def load_ground_truth(path: str, synsets: Synsets | None = None) -> Annotations:
    """A folder of devkit XMLs (ILSVRC/Annotations/CLS-LOC/val) or a Kaggle LOC_val_solution.csv."""
    if os.path.isdir(path):
        return read_xml_dir(path, synsets)
    if not os.path.isfile(path):
        raise UserError(f"ground truth not found: {path} (give LOC_val_solution.csv or the folder of the "
                        "val XMLs)")
    return read_kaggle_solution(path, synsets)


def read_blacklist(path: str, image_ids: list[str]) -> set[str]:
    """The devkit blacklist: one image per line, as a 1-based index into the sorted image names (the
    devkit's ILSVRC2015_clsloc_validation_blacklist.txt) or as the image name itself."""
    ordered = sorted(image_ids)
    known = set(ordered)
    blacklist = set()
    for number, line in numbered_lines(path):
        entry = line.strip()
        if not entry:
            continue
        if entry.isdigit():
            if not 1 <= int(entry) <= len(ordered):
                raise UserError(f"{path} line {number}: image index {entry} is outside 1..{len(ordered)} "
                                "(indices count the ground-truth images in sorted name order)")
            blacklist.add(ordered[int(entry) - 1])
        elif entry in known:
            blacklist.add(entry)
        else:
            raise UserError(f"{path} line {number}: '{entry}' is neither an image index nor a ground-truth "
                            "image name")
    return blacklist


def format_table(errors: LocalizationErrors) -> str:
    """The devkit demo's "# guesses vs clsloc error vs cls-only error" table, in percent."""
    lines = [f"images: {errors.num_images} ({errors.num_blacklisted} blacklisted for LOC, "
             f"{errors.num_missing} without prediction)",
             "# guesses   clsloc error (%)   cls-only error (%)"]
    for k, (loc, cls) in enumerate(zip(errors.loc_err_by_guesses, errors.cls_err_by_guesses), start=1):
        lines.append(f"{k:9d}   {loc:16.2f}   {cls:18.2f}")
    lines.append(f"top-1 LOC error {errors.top1_loc_err:.2f}%   top-5 LOC error {errors.top5_loc_err:.2f}%   "
                 f"top-1 CLS error {errors.top1_cls_err:.2f}%   top-5 CLS error {errors.top5_cls_err:.2f}%")
    return "\n".join(lines)


def write_json(obj: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2)
    os.replace(path + ".tmp", path)  # a reader never sees half a file


def score_files(gt: str, pred: str, synsets: str | None, out_dir: str, blacklist: str | None = None,
                max_guesses: int = MAX_GUESSES) -> dict:
    """Score ``pred`` (Kaggle CSV or devkit text) against ``gt`` (Kaggle CSV or XML folder); print the table
    and write ``out_dir/metrics.json`` (errors in percent). ``synsets`` is needed for devkit predictions."""
    synset_list = read_synsets(synsets) if synsets else None
    ground_truth = load_ground_truth(gt, synset_list)
    predictions = read_predictions(pred, synset_list, list(ground_truth))
    ignored = read_blacklist(blacklist, list(ground_truth)) if blacklist else None
    errors = localization_errors(ground_truth, predictions, max_guesses, ignored)
    print(format_table(errors))
    metrics = errors.as_dict()
    path = os.path.join(out_dir, "metrics.json")
    write_json(metrics, path)
    print(f"metrics written to {path}")
    return metrics
