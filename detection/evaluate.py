"""Evaluation entry points: a model on a config's test set, or a detections file against a GT file."""

from __future__ import annotations

import json
import logging
import os

from resnet_engine import distributed as dist_utils
from resnet_engine.setup import setup_run

from .data.loader import build_test_dataset, build_test_loader
from .evaluation.coco_eval import (
    evaluate_detections,
    format_results,
    gather_test_results,
    load_results_file,
    metrics_for_json,
    score_test_set,
)
from .inference import load_fast_detector, run_inference
from .modeling.build import build_test_model
from .modeling.speed import inference_autocast

logger = logging.getLogger(__name__)


def write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2)
    os.replace(path + ".tmp", path)


def evaluate_weights(cfg, weights: str, out_dir: str | None = None, plots_dir: str | None = None) -> dict:
    """Run ``weights`` on the config's test set; print and write the COCO metrics and the detections."""
    device = setup_run(cfg, save=False)
    out_dir = out_dir or cfg.output_dir
    inference_autocast(cfg.test.amp, device)  # an unusable test.amp fails before any work
    model, category_map = load_fast_detector(cfg, weights, device)
    dataset = build_test_dataset(cfg, category_map)
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    results, seconds, unreadable = run_inference(build_test_model(model, cfg), loader, category_map.category_ids,
                                                 amp=cfg.test.amp)
    results, unreadable = gather_test_results(results, unreadable, len(dataset))
    if not dist_utils.is_main_process():
        return {}
    write_json(results, os.path.join(out_dir, "detections.json"))
    metrics = score_test_set(dataset.coco.dataset, [r["image_id"] for r in dataset.records], results, unreadable,
                             cfg.test.eval_backend, source=weights)
    report(metrics, out_dir, plots_dir, extra={"seconds_per_image": round(seconds, 4)})
    metrics["seconds_per_image"] = round(seconds, 4)
    return metrics


def score_files(gt_file: str, det_file: str, out_dir: str, backend: str = "pycocotools",
                plots_dir: str | None = None) -> dict:
    """Scoring mode: a COCO results file against a COCO annotation file, no model."""
    from .data.coco import load_coco

    coco = load_coco(gt_file, key_hint="--gt")
    results = load_results_file(det_file)
    metrics = evaluate_detections(coco.dataset, results, backend, source=det_file)
    report(metrics, out_dir, plots_dir)
    return metrics


def report(metrics: dict, out_dir: str, plots_dir: str | None, extra: dict | None = None) -> None:
    print(metrics["summary"].rstrip())
    print(format_results(metrics))
    data = metrics_for_json(metrics)
    data.update(extra or {})
    write_json(data, os.path.join(out_dir, "metrics.json"))
    if plots_dir:
        from .evaluation.plots import plot_precision_recall

        plot_precision_recall(metrics, plots_dir)
    print(f"metrics written to {os.path.join(out_dir, 'metrics.json')}")
