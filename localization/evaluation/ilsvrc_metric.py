"""The ILSVRC CLS-LOC localization metric with the official devkit's rules (eval_clsloc.m, compute_overlap.m).

What is implemented, per image:

* The prediction is a ranked list of guesses (wnid, box); only the first ``max_guesses`` (5) count, fewer
  are allowed. Each guess is judged with its own box: two guesses with the same label are two chances.
* The image's GT labels are the distinct WNIDs of its GT boxes (CLS-LOC images have one). For a GT label g,
  guess j is right when its label is g and its box has IoU >= 0.5 with at least one GT box of label g
  (exactly 0.5 passes: the devkit marks a box wrong when IoU < 0.50).
* Error for label g = 0 if a right guess is among the first k, else 1. The image's error is the MEAN over
  its GT labels (the devkit's ``e(i) = sum_k min_j d(i,j) / n``); with one GT label it is 0 or 1.
* LOC error = sum of image errors over the images not blacklisted / number of those images.
* CLS error (label only, no box) uses the same per-label mean, over ALL images: the devkit's
  classification error in eval_clsloc does not apply the blacklist, and neither does this one.
* IoU uses inclusive pixel coordinates: width = xmax - xmin + 1. Boxes that do not overlap get IoU 0 here
  (the devkit's sentinel is -1; both fail the 0.5 test).
* A ground-truth image missing from the predictions, or given no guess (an empty line or row, or only empty
  devkit slots), counts as wrong and as "without prediction" (one warning).
  Predicted images that are not in the ground truth are ignored (one warning).

Everything is vectorised over all (guess, GT box of the same image and label) pairs, so the 50,000 val
images score in about a second.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from classification.data.ilsvrc import Box
from detection.evaluation.voc_eval import inclusive_iou_rows
from resnet_engine.errors import UserError

from ..data.predictions import EMPTY_GUESS

IOU_THRESHOLD = 0.5
MAX_GUESSES = 5

Guesses = Mapping[str, Sequence[tuple[str, Sequence[float]]]]


def iou_inclusive(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (xmin, ymin, xmax, ymax) boxes in inclusive pixels, as the devkit's compute_overlap.m."""
    return float(inclusive_iou_rows(np.asarray([a]), np.asarray([b]))[0])


@dataclass(frozen=True)
class LocalizationErrors:
    """Errors in percent. ``*_by_guesses[k-1]`` uses the first k guesses; top-5 is the last entry."""

    top1_loc_err: float
    top5_loc_err: float
    top1_cls_err: float
    top5_cls_err: float
    loc_err_by_guesses: list[float]
    cls_err_by_guesses: list[float]
    num_images: int
    num_blacklisted: int
    num_missing: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _GroundTruthIndex:
    """The ground truth as sorted arrays; an (image, label) pair is image * num_codes + code."""

    image_ids: list[str]
    position: dict[str, int]
    codes: dict[str, int]
    box_keys: np.ndarray  # (M,) sorted, one per GT box
    boxes: np.ndarray  # (M, 4) in the order of box_keys
    label_keys: np.ndarray  # (L,) the distinct (image, GT label) keys, sorted
    label_images: np.ndarray  # (L,) image position of each label key
    labels_per_image: np.ndarray  # (N,)

    def keys(self, images: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return images.astype(np.int64) * len(self.codes) + codes


def _index_ground_truth(gt: Guesses) -> _GroundTruthIndex:
    image_ids = sorted(gt)
    if not image_ids:
        raise UserError("the ground truth has no images")
    codes: dict[str, int] = {}
    images, labels, boxes = [], [], []
    for position, image_id in enumerate(image_ids):
        if not gt[image_id]:
            raise UserError(f"ground-truth image {image_id} has no boxes; every scored image needs its class "
                            "and at least one box")
        for wnid, box in gt[image_id]:
            images.append(position)
            labels.append(codes.setdefault(wnid, len(codes)))
            boxes.append(box)
    keys = np.asarray(images, np.int64) * len(codes) + np.asarray(labels, np.int64)
    order = np.argsort(keys, kind="stable")
    label_keys = np.unique(keys)
    label_images = label_keys // len(codes)
    return _GroundTruthIndex(image_ids, {image_id: i for i, image_id in enumerate(image_ids)}, codes,
                             keys[order], np.asarray(boxes, np.float64).reshape(-1, 4)[order], label_keys,
                             label_images, np.bincount(label_images, minlength=len(image_ids)))


@dataclass
class _GuessRows:
    """Guesses flattened to arrays; guesses whose label is no GT label of any image are left out."""

    images: np.ndarray
    ranks: np.ndarray
    codes: np.ndarray
    boxes: np.ndarray


def _guess_rows(index: _GroundTruthIndex, rows: list[tuple[int, int, str, Sequence[float]]]) -> _GuessRows:
    kept = [(image, rank, index.codes[wnid], box) for image, rank, wnid, box in rows if wnid in index.codes]
    if not kept:
        empty = np.zeros(0, np.int64)
        return _GuessRows(empty, empty, empty, np.zeros((0, 4)))
    images, ranks, codes, boxes = zip(*kept)
    return _GuessRows(np.asarray(images, np.int64), np.asarray(ranks, np.int64), np.asarray(codes, np.int64),
                      np.asarray(boxes, np.float64).reshape(-1, 4))


def _first_right_ranks(index: _GroundTruthIndex, guesses: _GuessRows,
                       never: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (image, GT label) key: the first rank with a right label and box, and with a right label."""
    keys = index.keys(guesses.images, guesses.codes)
    low = np.searchsorted(index.box_keys, keys, "left")
    counts = np.searchsorted(index.box_keys, keys, "right") - low
    # Every guess meets every GT box of its own image and label: expand those pairs and test them at once.
    pair_guess = np.repeat(np.arange(len(keys)), counts)
    pair_box = np.repeat(low - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    hit = inclusive_iou_rows(guesses.boxes[pair_guess], index.boxes[pair_box]) >= IOU_THRESHOLD
    box_right = np.zeros(len(keys), bool)
    box_right[pair_guess[hit]] = True
    label_right = counts > 0
    slot = np.searchsorted(index.label_keys, keys)
    first_cls = np.full(len(index.label_keys), never, np.int64)
    np.minimum.at(first_cls, slot[label_right], guesses.ranks[label_right])
    first_loc = np.full(len(index.label_keys), never, np.int64)
    np.minimum.at(first_loc, slot[box_right], guesses.ranks[box_right])
    return first_loc, first_cls


def _error_percent(index: _GroundTruthIndex, label_wrong: np.ndarray, counted: np.ndarray) -> float:
    """Mean over each image's GT labels, then mean over the counted images, in percent."""
    per_image = np.bincount(index.label_images, weights=label_wrong.astype(np.float64),
                            minlength=len(index.image_ids)) / index.labels_per_image
    return float(100.0 * per_image[counted].sum() / counted.sum())


def _blacklist_mask(index: _GroundTruthIndex, blacklist: Iterable[str] | None) -> np.ndarray:
    mask = np.zeros(len(index.image_ids), bool)
    for image_id in blacklist or ():
        if image_id in index.position:
            mask[index.position[image_id]] = True
    if mask.all():
        raise UserError("every ground-truth image is blacklisted; nothing is left to score")
    return mask


def _warn_coverage(index: _GroundTruthIndex, predicted: Iterable[str], answered: Iterable[str] | None = None) -> int:
    """Warns about the ground-truth images without an answer (``answered``, by default all ``predicted``
    images) and the predicted images outside the ground truth; returns the number without an answer."""
    predicted = set(predicted)
    answered = predicted if answered is None else set(answered)
    missing = [image_id for image_id in index.image_ids if image_id not in answered]
    if missing:
        warnings.warn(f"{len(missing)} of {len(index.image_ids)} ground-truth images have no prediction "
                      f"(e.g. {missing[0]}); they count as wrong", stacklevel=3)
    extra = sorted(predicted.difference(index.position))
    if extra:
        warnings.warn(f"{len(extra)} predicted images are not in the ground truth (e.g. {extra[0]}); "
                      "they are ignored", stacklevel=3)
    return len(missing)


def localization_errors(gt: Guesses, predictions: Guesses, max_guesses: int = MAX_GUESSES,
                        blacklist: Iterable[str] | None = None) -> LocalizationErrors:
    """Official CLS-LOC errors (percent) of ranked ``predictions`` against ``gt`` ({image id: [(wnid, box)]}).

    ``blacklist``: image ids left out of the LOC error (not of the CLS error, as in the devkit).
    """
    if max_guesses < 1:
        raise ValueError("max_guesses must be at least 1")
    index = _index_ground_truth(gt)
    # An image with no guess at all (an empty devkit line, such as the last line of a file one line short,
    # or an empty Kaggle row) has no prediction, as much as one left out of the file.
    num_missing = _warn_coverage(index, predictions, [image_id for image_id, guesses in predictions.items()
                                                      if any(wnid != EMPTY_GUESS for wnid, _ in guesses)])
    rows = [(index.position[image_id], rank, wnid, box)
            for image_id, guesses in predictions.items() if image_id in index.position
            for rank, (wnid, box) in enumerate(guesses[:max_guesses])]
    first_loc, first_cls = _first_right_ranks(index, _guess_rows(index, rows), never=max_guesses)
    blacklisted = _blacklist_mask(index, blacklist)
    everyone = np.ones(len(index.image_ids), bool)
    loc = [_error_percent(index, first_loc >= k, ~blacklisted) for k in range(1, max_guesses + 1)]
    cls = [_error_percent(index, first_cls >= k, everyone) for k in range(1, max_guesses + 1)]
    return LocalizationErrors(loc[0], loc[-1], cls[0], cls[-1], loc, cls, len(index.image_ids),
                              int(blacklisted.sum()), num_missing)


def gt_known_loc_error(gt: Guesses, boxes_for_gt_class: Mapping[str, Box | Mapping[str, Box]],
                       blacklist: Iterable[str] | None = None) -> float:
    """"LOC error on GT class" (GT-known) in percent: the class is taken as right, only its box is judged.

    ``boxes_for_gt_class[image_id]`` is the box the model predicts for the image's GT class, or a mapping
    {wnid: box} (the per-class boxes; the GT classes are looked up). A box is right when its IoU with some
    GT box of that class is >= 0.5. An image with several GT labels scores the mean over them, a single box
    being judged against each; a missing image or class is wrong.
    """
    index = _index_ground_truth(gt)
    _warn_coverage(index, boxes_for_gt_class)
    rows = []
    for image_id, predicted in boxes_for_gt_class.items():
        if image_id not in index.position:
            continue
        for wnid in dict.fromkeys(wnid for wnid, _ in gt[image_id]):
            box = predicted.get(wnid) if isinstance(predicted, Mapping) else predicted
            if box is not None:
                rows.append((index.position[image_id], 0, wnid, box))
    first_loc, _ = _first_right_ranks(index, _guess_rows(index, rows), never=1)
    return _error_percent(index, first_loc >= 1, ~_blacklist_mask(index, blacklist))


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
