"""Precision-recall curves from COCOeval's accumulated precision array (tools/eval_det.py --plots)."""

from __future__ import annotations

import os

import numpy as np

IOU_LEVELS = {"IoU 0.50": 0, "IoU 0.75": 5, "IoU 0.50:0.95": None}


def precision_curve(precision: np.ndarray, iou_index: int | None, category: int) -> np.ndarray:
    """Precision at the 101 recall points for one category (all areas, 100 detections); -1 = undefined.

    ``precision`` is COCOeval's eval["precision"], (IoU, recall, category, area, max detections);
    ``iou_index`` one of its IoU thresholds (0: 0.50, 5: 0.75), or None for their mean at each recall
    point over the IoUs where it is defined; ``category`` the index in params.catIds, the order of the
    per-category table."""
    values = precision[:, :, category, 0, -1]  # (iou, recall)
    if iou_index is not None:
        return values[iou_index]
    valid = values > -1
    summed = np.where(valid, values, 0).sum(axis=0)
    counts = valid.sum(axis=0)
    return np.where(counts > 0, summed / np.maximum(counts, 1), -1)


def plot_precision_recall(metrics: dict, out_dir: str) -> list[str]:
    """One PNG per category plus an overview of all categories at IoU 0.5; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision = metrics.get("precision")
    names = list(metrics.get("per_category", {}))
    if precision is None or not names:
        return []
    os.makedirs(out_dir, exist_ok=True)
    recall = np.linspace(0, 1, precision.shape[1])
    written = []
    overview, overview_axis = plt.subplots(figsize=(6, 5))
    for index, name in enumerate(names):
        figure, axis = plt.subplots(figsize=(5, 4))
        for label, iou_index in IOU_LEVELS.items():
            curve = precision_curve(precision, iou_index, index)
            if (curve > -1).any():
                axis.plot(recall[curve > -1], curve[curve > -1], label=label)
        ap = metrics["per_category"][name]
        axis.set(title=f"{name}: AP {ap:.1f}" if ap == ap else f"{name}: no ground truth",
                 xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        axis.grid(alpha=0.3)
        axis.legend(loc="lower left")
        path = os.path.join(out_dir, f"pr_{_safe(name)}.png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
        curve = precision_curve(precision, 0, index)
        if (curve > -1).any():
            overview_axis.plot(recall[curve > -1], curve[curve > -1], label=name)
    overview_axis.set(title="precision-recall at IoU 0.5", xlabel="recall", ylabel="precision", xlim=(0, 1),
                      ylim=(0, 1.02))
    overview_axis.grid(alpha=0.3)
    if len(names) <= 20:
        overview_axis.legend(loc="lower left", fontsize="small")
    path = os.path.join(out_dir, "pr_all.png")
    overview.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(overview)
    return [path, *written]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
