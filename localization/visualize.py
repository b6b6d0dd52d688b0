"""Pictures of localization results: ground-truth boxes and ranked guesses drawn on the images
(``tools/eval_loc.py --plots DIR``)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping

import cv2
import numpy as np

from classification.data.ilsvrc import Annotations, Box
from detection.data.image_io import read_image
from detection.visualize import write_rgb

from .evaluation.ilsvrc_metric import iou_inclusive

GT_COLOUR = (40, 200, 40)       # green: the ground truth
RIGHT_COLOUR = (40, 120, 255)   # blue: a guess with a GT label and IoU >= 0.5 with one of its boxes
WRONG_COLOUR = (230, 40, 40)    # red: any other guess


def is_right(guess: tuple[str, Box], truth: list[tuple[str, Box]]) -> bool:
    """The official rule for one guess: the label of a GT object and IoU >= 0.5 with its box."""
    label, box = guess
    return any(label == gt_label and iou_inclusive(box, gt_box) >= 0.5 for gt_label, gt_box in truth)


def draw_localization(image: np.ndarray, truth: list[tuple[str, Box]], guesses: list[tuple[str, Box]],
                      names: Mapping[str, str] | None = None, max_guesses: int = 5) -> np.ndarray:
    """A copy of the RGB ``image`` with the GT boxes and up to ``max_guesses`` ranked guesses drawn."""
    canvas = np.ascontiguousarray(image).copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 250))
    font_scale = max(0.35, min(canvas.shape[:2]) / 800)
    for label, box in truth:
        _box(canvas, box, GT_COLOUR, thickness, f"GT {_name(label, names)}", font_scale, below=True)
    for rank, guess in enumerate(guesses[:max_guesses], start=1):
        colour = RIGHT_COLOUR if is_right(guess, truth) else WRONG_COLOUR
        _box(canvas, guess[1], colour, thickness, f"{rank}: {_name(guess[0], names)}", font_scale, below=False)
    return canvas


def write_plots(truth: Annotations, predictions: Annotations, image_path: Callable[[str], str | None],
                out_dir: str, count: int = 8, names: Mapping[str, str] | None = None) -> list[str]:
    """Draw the first ``count`` images (sorted ids) that have a file; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for image_id in sorted(truth):
        if len(written) == count:
            break
        path = image_path(image_id)
        if path is None:
            continue
        canvas = draw_localization(read_image(path), truth[image_id], predictions.get(image_id, []), names)
        target = os.path.join(out_dir, f"{image_id}.jpg")
        write_rgb(target, canvas)
        written.append(target)
    return written


def image_finder(folder: str) -> Callable[[str], str | None]:
    """image id -> the file ``folder/<id>.<any extension>`` (or in a class subfolder), if there is one."""
    def find(image_id: str) -> str | None:
        matches = glob.glob(os.path.join(folder, f"{image_id}.*")) or glob.glob(os.path.join(folder, "*", f"{image_id}.*"))
        return matches[0] if matches else None

    return find


def _name(wnid: str, names: Mapping[str, str] | None) -> str:
    return names.get(wnid, wnid) if names else wnid


def _box(canvas: np.ndarray, box: Box, colour, thickness: int, caption: str, font_scale: float, below: bool) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
    (width, height), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    top = y2 if below else max(y1 - height - baseline, 0)
    cv2.rectangle(canvas, (x1, top), (x1 + width, top + height + baseline), colour, -1)
    cv2.putText(canvas, caption, (x1, top + height), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                cv2.LINE_AA)
