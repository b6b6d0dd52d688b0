"""Evaluating a detector: running it over a test set and scoring its detections with COCO AP, and the
two modes of tools/eval_det.py (a model on a config's test set, or a detections file against a
ground-truth file)."""

from __future__ import annotations

import logging
import os
import re
import time
import warnings

import torch
from tqdm import tqdm

from resnet_engine import distributed as dist_utils
from resnet_engine.files import write_json
from resnet_engine.loaders import build_test_loader
from resnet_engine.run_dir import evaluation_dir
from resnet_engine.setup import setup_run

from ..data.coco import CocoDetection, lists_annotations, load_coco, split_unreadable, warn_of_box_areas
from ..data.loader import build_test_dataset
from ..ensemble import load_detectors
from ..modeling.build import build_test_model, test_needs_original_images
from ..modeling.speed import inference_autocast
from .coco_eval import (
    detections_to_coco,
    evaluate_detections,
    format_results,
    gather_test_results,
    load_results_file,
    metrics_for_json,
    score_test_set,
    warn_of_images_without_detections,
)
from .det_eval import METRIC as DET_METRIC
from .det_eval import det_metrics_for_json, score_det_test_set
from .plots import plot_precision_recall
from .voc_eval import VOC_METRICS, score_voc_test_set, voc_metrics_for_json

# The metrics at IoU 0.5 of one number per class: VOC's and ImageNet DET's.
AP50_METRICS = (*VOC_METRICS, DET_METRIC)

logger = logging.getLogger(__name__)


@torch.inference_mode()
def run_inference(model, loader, category_ids: list[int], progress: bool = True,
                  amp: str = "off") -> tuple[list[dict], float, list[tuple[int, str]]]:
    """COCO results of this process's images, the seconds per image spent in the model, and the
    (image id, path) of the images that could not be read and were left out."""
    model.eval()
    results, model_seconds, images, unreadable = [], 0.0, 0, []
    bar = tqdm(loader, desc="inference", disable=not (progress and dist_utils.is_main_process()), leave=False)
    device = next(model.parameters()).device
    for batch in bar:
        batch, skipped = split_unreadable(batch)
        unreadable.extend(skipped)
        if not batch:
            continue
        start = time.perf_counter()
        with inference_autocast(amp, device):
            outputs = model(batch)
        model_seconds += time.perf_counter() - start
        images += len(batch)
        for sample, detections in zip(batch, outputs):
            results.extend(detections_to_coco(sample["image_id"], detections, category_ids))
    return results, model_seconds / max(images, 1), unreadable


def detect_test_set(model, dataset: CocoDetection, cfg,
                    progress: bool = True) -> tuple[list[dict], list[tuple[int, str]], float]:
    """The detections of every image of ``dataset``, each process running its share with the config's
    test-time options: (COCO results, gathered on the main process in the order of the dataset's images
    and empty on the others; the unreadable images' (image id, path), on every process; this process's
    seconds per image in the model)."""
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    results, seconds, unreadable = run_inference(build_test_model(model, cfg), loader,
                                                 dataset.category_map.category_ids, progress, cfg.test.amp)
    results, unreadable = gather_test_results(results, unreadable, [r["image_id"] for r in dataset.records])
    return results, unreadable, seconds


def evaluate_model(model, dataset: CocoDetection, cfg, progress: bool = True) -> dict:
    """COCO metrics of ``model`` on ``dataset``, sharded over processes and identical on all of them."""
    results, unreadable, seconds = detect_test_set(model, dataset, cfg, progress)
    if cfg.test.metric in AP50_METRICS:
        metrics = None
        if dist_utils.is_main_process():
            metrics = ap50_test_metrics(dataset, results, unreadable, cfg.test.metric, cfg.output_dir, seconds,
                                        source="model detections")
        return dist_utils.broadcast_object(metrics)
    metrics = None
    if dist_utils.is_main_process() and not lists_annotations(dataset.coco):
        metrics = write_server_results(results, dataset, unreadable, cfg.output_dir)
    elif dist_utils.is_main_process():
        scored = score_test_set(dataset.coco.dataset, [r["image_id"] for r in dataset.records], results,
                                unreadable, cfg.test.eval_backend, source="model detections")
        metrics = metrics_for_json(scored)  # with num_images and skipped_images
        metrics["seconds_per_image"] = round(seconds, 4)
        metrics["_summary"] = scored["summary"]
    return dist_utils.broadcast_object(metrics)


def evaluate_weights(cfg, weights: str | list[str], out_dir: str | None = None, plots_dir: str | None = None) -> dict:
    """Model mode: run ``weights`` on the config's test set; print and write the COCO metrics (with the
    weights' path) and the detections to ``out_dir``, by default output_dir/eval_<weights file stem>
    (resnet_engine.run_dir.evaluation_dir: the run's own metrics.json stays). Several weight files run as
    one ensemble (detection/ensemble.py)."""
    device = setup_run(cfg, save=False)
    out_dir = out_dir or evaluation_dir(cfg.output_dir, weights)
    inference_autocast(cfg.test.amp, device)  # an unusable test.amp fails before any work
    model, category_map = load_detectors(cfg, weights, device)
    source = weights if isinstance(weights, str) else " + ".join(weights)
    dataset = build_test_dataset(cfg, category_map, resize=not test_needs_original_images(cfg))
    results, unreadable, seconds = detect_test_set(model, dataset, cfg)
    if not dist_utils.is_main_process():
        return {}
    if cfg.test.metric in AP50_METRICS:
        write_json(results, os.path.join(out_dir, "detections.json"))
        metrics = ap50_test_metrics(dataset, results, unreadable, cfg.test.metric, out_dir, seconds, source=source)
        print(metrics.pop("_summary") or "")
        metrics["weights"] = weights
        write_json(metrics, os.path.join(out_dir, "metrics.json"))
        print(f"metrics written to {os.path.join(out_dir, 'metrics.json')}")
        return metrics
    if not lists_annotations(dataset.coco):
        metrics = {**write_server_results(results, dataset, unreadable, out_dir), "weights": weights}
        write_json(metrics, os.path.join(out_dir, "metrics.json"))
        return metrics
    write_json(results, os.path.join(out_dir, "detections.json"))
    metrics = score_test_set(dataset.coco.dataset, [r["image_id"] for r in dataset.records], results, unreadable,
                             cfg.test.eval_backend, source=source)
    extra = {"seconds_per_image": round(seconds, 4), "weights": weights}
    report(metrics, out_dir, plots_dir, extra=extra)
    metrics.update(extra)
    return metrics


def server_results_name(ann_file: str, out_dir: str) -> str:
    """The name the COCO evaluation server asks for, detections_<split>_<algorithm>_results.json: the split
    from the json's name (image_info_test-dev2015.json: test-dev2015), the algorithm from the output folder's,
    with anything but letters, digits and '-' made '-' (the underscores separate the name's fields)."""
    split = re.sub(r"^(image_info|instances)_", "", os.path.basename(ann_file).removesuffix(".json"))
    algorithm = re.sub(r"[^A-Za-z0-9-]+", "-", os.path.basename(os.path.normpath(out_dir))).strip("-") or "model"
    return f"detections_{split}_{algorithm}_results.json"


def write_server_results(results: list[dict], dataset: CocoDetection, unreadable: list[tuple[int, str]],
                         out_dir: str) -> dict:
    """A test set without annotations (test-dev): its COCO results file for the evaluation server, and no
    score. Returns what metrics.json records instead of AP."""
    path = os.path.join(out_dir, server_results_name(dataset.ann_file, out_dir))
    write_json(results, path)
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable test images have no detections in {path}: "
                      + ", ".join(image_path for _, image_path in unreadable), stacklevel=2)
    print(f"{dataset.ann_file} has no annotations, so nothing is scored here: {len(results)} detections of "
          f"{len(dataset) - len(unreadable)} images written to {path}, to zip and upload to the COCO evaluation "
          "server")
    return {"results_file": path, "num_images": len(dataset) - len(unreadable), "skipped_images": len(unreadable)}


def voc_test_metrics(dataset: CocoDetection, results: list[dict], unreadable: list[tuple[int, str]], metric: str,
                     out_dir: str, seconds: float, source: str) -> dict:
    """test.metric=voc2007/voc2010: the VOC metrics of a test set's detections for metrics.json, with the
    summary under "_summary", and the per-class files of the VOC evaluation server in ``out_dir``."""
    scored = score_voc_test_set(dataset.coco.dataset, [r["image_id"] for r in dataset.records], results, unreadable,
                                metric, out_dir, source)
    metrics = voc_metrics_for_json(scored) if "voc" in scored else scored
    metrics["seconds_per_image"] = round(seconds, 4)
    metrics["_summary"] = scored.get("summary", "")
    return metrics


def det_test_metrics(dataset: CocoDetection, results: list[dict], unreadable: list[tuple[int, str]], out_dir: str,
                     seconds: float, source: str) -> dict:
    """test.metric=imagenet_det: the DET metrics of a test set's detections for metrics.json, with the
    summary under "_summary"; the detections written to ``out_dir``/detections.json and, as the devkit
    reads them, to ``out_dir``/det_results.txt."""
    write_json(results, os.path.join(out_dir, "detections.json"))
    scored = score_det_test_set(dataset.coco.dataset, [r["image_id"] for r in dataset.records], results, unreadable,
                                out_dir, source)
    metrics = det_metrics_for_json(scored) if "det" in scored else scored
    metrics["seconds_per_image"] = round(seconds, 4)
    metrics["_summary"] = scored.get("summary", "")
    return metrics


def ap50_test_metrics(dataset: CocoDetection, results: list[dict], unreadable: list[tuple[int, str]], metric: str,
                      out_dir: str, seconds: float, source: str) -> dict:
    """The metrics of test.metric=voc2007/voc2010/imagenet_det, for metrics.json."""
    if metric == DET_METRIC:
        return det_test_metrics(dataset, results, unreadable, out_dir, seconds, source)
    return voc_test_metrics(dataset, results, unreadable, metric, out_dir, seconds, source)


def primary_metric(cfg) -> str:
    """The metric that selects model_best.pth: COCO AP, the VOC mAP under test.metric=voc2007/voc2010, the
    DET mAP under test.metric=imagenet_det."""
    if cfg.test.metric == DET_METRIC:
        return "det/mAP"
    return "voc/mAP" if cfg.test.metric in VOC_METRICS else "bbox/AP"


def score_files(gt_file: str, det_file: str, out_dir: str, backend: str = "auto",
                plots_dir: str | None = None) -> dict:
    """Scoring mode: a COCO results file against a COCO annotation file, no model."""
    coco = load_coco(gt_file, key_hint="--gt")
    warn_of_box_areas(gt_file, coco.dataset.get("annotations", []))
    results = load_results_file(det_file, coco.dataset["images"])
    metrics = evaluate_detections(coco.dataset, results, backend, source=det_file)
    warn_of_images_without_detections(coco.dataset, results, det_file, gt_file)
    report(metrics, out_dir, plots_dir)
    return metrics


def report(metrics: dict, out_dir: str, plots_dir: str | None, extra: dict | None = None) -> None:
    print(metrics["summary"].rstrip())
    print(format_results(metrics))
    data = metrics_for_json(metrics)
    data.update(extra or {})
    write_json(data, os.path.join(out_dir, "metrics.json"))
    if plots_dir:
        plot_precision_recall(metrics, plots_dir)
    print(f"metrics written to {os.path.join(out_dir, 'metrics.json')}")
