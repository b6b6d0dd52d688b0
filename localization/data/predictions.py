"""Readers of localization predictions, the Kaggle CSV and the ILSVRC devkit text format, and the writer of
the Kaggle CSV.

Both give {image id: [(wnid, (xmin, ymin, xmax, ymax)), ...]} with the guesses best first. All guesses are
kept; the metric uses the first five.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence

from classification.data.ilsvrc import (
    KAGGLE_HEADER,
    Annotations,
    Box,
    Synsets,
    is_kaggle_csv,
    numbered_lines,
    parse_number,
    read_kaggle_rows,
)
from resnet_engine.errors import UserError

# A devkit label 0 is an empty slot (MATLAB's dlmread pads short rows with zeros): it keeps its rank and is
# never right. The metric treats this WNID like any label that is not in the ground truth.
EMPTY_GUESS = ""


def read_kaggle_predictions(path: str, synsets: Synsets | None = None) -> Annotations:
    """"ImageId,PredictionString" rows with ranked "wnid xmin ymin xmax ymax" groups (any number of them)."""
    return read_kaggle_rows(path, synsets, is_ground_truth=False)


def read_devkit_predictions(path: str, synsets: Synsets, image_ids: Sequence[str]) -> Annotations:
    """The devkit submission: line i holds the guesses "label xmin ymin xmax ymax ..." of the i-th image.

    ``image_ids`` are the ground-truth image names (sorted here, as the devkit sorts the file names);
    labels are 1-based positions in ``synsets``.
    """
    text = "".join(line for _, line in numbered_lines(path))
    # Split on newlines rather than iterate lines: "\n".join(lines) for N images whose last line is empty
    # gives only N-1 iterated lines. Blank items past the N-th are trailing newlines, not images.
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) > len(image_ids) and not "".join(lines[len(image_ids):]).strip():
        lines = lines[:len(image_ids)]
    if len(lines) != len(image_ids):
        raise UserError(f"{path}: {len(text.splitlines())} lines for {len(image_ids)} ground-truth images; "
                        "the devkit format has one line per image, in sorted image-name order")
    return {image_id: _parse_devkit_line(path, number, line_text, synsets)
            for number, (image_id, line_text) in enumerate(zip(sorted(image_ids), lines), start=1)}


def _parse_devkit_line(path: str, line: int, text: str, synsets: Synsets) -> list[tuple[str, Box]]:
    tokens = text.split()  # devkit text separates by spaces (check_devkit_like refuses a comma-separated file)
    if len(tokens) % 5:
        raise UserError(f"{path} line {line}: {len(tokens)} numbers; a line holds groups of 5 "
                        "'label xmin ymin xmax ymax'")
    guesses = []
    for start in range(0, len(tokens), 5):
        label = _label(path, line, tokens[start], len(synsets))
        box = tuple(parse_number(path, line, token, "coordinate") for token in tokens[start + 1:start + 5])
        guesses.append((synsets.wnid(label) if label else EMPTY_GUESS, box))
    return guesses


def _label(path: str, line: int, token: str, num_classes: int) -> int:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not (value.is_integer() and 0 <= value <= num_classes):
        raise UserError(f"{path} line {line}: label '{token}' is not a class id 1..{num_classes} "
                        "(1-based line number in the synset list)")
    return int(value)


def read_predictions(path: str, synsets: Synsets | None, image_ids: Sequence[str]) -> Annotations:
    """Either format: a first line "ImageId,PredictionString" means Kaggle CSV, anything else devkit text."""
    if is_kaggle_csv(path):
        return read_kaggle_predictions(path, synsets)
    check_devkit_like(path)
    if synsets is None:
        raise UserError(f"{path} is in the devkit format (integer labels): give the synset list with "
                        "--synsets (the devkit's map_clsloc.txt) to translate its labels")
    if not synsets.numbered:
        warnings.warn(f"{path}: its devkit labels are read as line numbers of {synsets.source}, which does not "
                      "number its classes (LOC_synset_mapping.txt lists them by WNID); the devkit's labels are "
                      "those of its map_clsloc.txt, another order: give --synsets map_clsloc.txt unless the "
                      "labels were written in this list's order", stacklevel=2)
    return read_devkit_predictions(path, synsets, image_ids)


def check_devkit_like(path: str) -> None:
    """A file read as devkit text that is plainly not: empty, or a Kaggle CSV without its header line
    (both were reported as "in the devkit format (integer labels)", which sent one to look for a synset list)."""
    first = next((line.strip() for _, line in numbered_lines(path) if line.strip()), None)
    if first is None:
        raise UserError(f"{path} holds no predictions (it is empty)")
    if "," in first:
        raise UserError(f"{path}: its first line ({first[:40]}...) is comma-separated but not the Kaggle header: a "
                        f"Kaggle CSV starts with the line {','.join(KAGGLE_HEADER)}; devkit text separates by spaces")


def write_kaggle_csv(predictions: Annotations, path: str) -> None:
    """{image id: ranked (wnid, box)} as a Kaggle CSV, replacing an older file in one step."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(KAGGLE_HEADER)
        for image_id, guesses in predictions.items():
            writer.writerow([image_id, " ".join(f"{wnid} {b[0]} {b[1]} {b[2]} {b[3]}" for wnid, b in guesses)])
    os.replace(path + ".tmp", path)
