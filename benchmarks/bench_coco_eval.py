"""COCO box AP at COCO val size with each installed scoring backend (pycocotools, faster-coco-eval).

    python benchmarks/bench_coco_eval.py [--images 5000] [--out benchmarks/results/coco_eval.json]

Generates in memory a case the size of COCO val2017: ``--images`` images (5,000) with about 7.3 boxes
each (about 36k), over COCO's 80 category ids (1 to 90 with gaps), some images without objects, some
crowd regions; and 100 detections per image, made by jittering most ground-truth boxes (a few given
another class) and filling up with random boxes of lower score, all from a fixed seed. Scores are
rounded to 5 decimals, as the toolkit writes them, so that ties occur as in a real results file.

Times, for each backend, the load of the ground truth and of the detections, evaluate, accumulate
and summarize, and prints the 12 numbers of each. The backends must agree on every number (within
1e-9 percent): the benchmark says whether they do and exits with 1 when they do not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detection.evaluation.coco_eval import STAT_NAMES  # noqa: E402
from resnet_engine.extras import installed  # noqa: E402

# COCO's 80 category ids: 1 to 90 less the ten the 2014 paper's list dropped.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
BOXES_PER_IMAGE = 7.3  # COCO val2017: 36,781 boxes over 5,000 images
DETECTIONS_PER_IMAGE = 100
EMPTY_FRACTION = 0.01  # val2017 has 48 images without an annotation
CROWD_FRACTION = 0.01
TOLERANCE = 1e-9  # percent; the backends compute the same sums, in another order at most


def random_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """``count`` boxes [x, y, w, h] inside the image, sizes spread in log scale from 4 px to the image."""
    w = np.minimum(np.exp(rng.uniform(np.log(4), np.log(width), count)), width - 1)
    h = np.minimum(w * np.exp(rng.normal(0, 0.5, count)), height - 1).clip(2)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.stack([x, y, w, h], axis=1)


def ground_truth_of_image(rng: np.random.Generator, image_id: int, first_id: int) -> tuple[dict, list[dict]]:
    width, height = int(rng.integers(480, 641)), int(rng.integers(360, 481))
    image = {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}
    count = 0 if rng.random() < EMPTY_FRACTION else 1 + int(rng.poisson(BOXES_PER_IMAGE - 1))
    boxes = random_boxes(rng, count, width, height)
    categories = rng.choice(COCO_CATEGORY_IDS, count)
    crowds = rng.random(count) < CROWD_FRACTION
    annotations = [{"id": first_id + k, "image_id": image_id, "category_id": int(categories[k]),
                    "bbox": [round(float(v), 2) for v in boxes[k]], "area": round(float(boxes[k, 2] * boxes[k, 3]), 2),
                    "iscrowd": int(crowds[k])} for k in range(count)]
    return image, annotations


def coco_val_like(images: int, seed: int = 0) -> dict:
    """A COCO annotation dict of ``images`` images with random boxes (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    dataset = {"images": [], "annotations": [],
               "categories": [{"id": i, "name": f"class{i}", "supercategory": "thing"} for i in COCO_CATEGORY_IDS]}
    for image_id in range(1, images + 1):
        image, annotations = ground_truth_of_image(rng, image_id, len(dataset["annotations"]) + 1)
        dataset["images"].append(image)
        dataset["annotations"].extend(annotations)
    return dataset


def detections_of_image(rng: np.random.Generator, image: dict, annotations: list[dict], per_image: int) -> list[dict]:
    """Most ground-truth boxes jittered (some of them given another class), then random boxes, up to
    ``per_image`` detections; the jittered ones mostly score higher than the random ones."""
    found = [a for a in annotations if rng.random() < 0.85][:per_image]
    boxes = np.array([a["bbox"] for a in found], dtype=float).reshape(-1, 4)
    boxes += rng.normal(0, 0.08, boxes.shape) * boxes[:, [2, 3, 2, 3]]
    boxes[:, 2:] = boxes[:, 2:].clip(1)
    categories = [a["category_id"] if rng.random() < 0.9 else int(rng.choice(COCO_CATEGORY_IDS)) for a in found]
    scores = list(rng.uniform(0.3, 1.0, len(found)))
    extra = per_image - len(found)
    boxes = np.concatenate([boxes, random_boxes(rng, extra, image["width"], image["height"])])
    categories += [int(c) for c in rng.choice(COCO_CATEGORY_IDS, extra)]
    scores += list(rng.uniform(0.0, 0.6, extra))
    return [{"image_id": image["id"], "category_id": int(category), "bbox": [round(float(v), 3) for v in box],
             "score": round(float(score), 5)} for box, category, score in zip(boxes, categories, scores)]


def perturbed_detections(gt_dataset: dict, per_image: int = DETECTIONS_PER_IMAGE, seed: int = 1) -> list[dict]:
    """COCO results for every image of ``gt_dataset`` (see detections_of_image), from a fixed seed."""
    rng = np.random.default_rng(seed)
    by_image = {image["id"]: [] for image in gt_dataset["images"]}
    for annotation in gt_dataset["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    results = []
    for image in gt_dataset["images"]:
        results.extend(detections_of_image(rng, image, by_image[image["id"]], per_image))
    return results


def coco_api(backend: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def time_backend(backend: str, gt_path: str, results: list[dict]) -> dict:
    """Seconds of each stage and the 12 numbers (percent) of one backend, its printing silenced."""
    COCO, COCOeval = coco_api(backend)
    seconds = {}
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(results)
        seconds["load"] = time.perf_counter() - start
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        for stage in ("evaluate", "accumulate", "summarize"):
            start = time.perf_counter()
            getattr(evaluator, stage)()
            seconds[stage] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return {"seconds": {k: round(v, 3) for k, v in seconds.items()},
            "stats": dict(zip(STAT_NAMES, (float(s) * 100 for s in evaluator.stats[: len(STAT_NAMES)])))}


def largest_difference(runs: dict[str, dict]) -> float:
    """The largest difference of any of the 12 numbers between any backend and the first."""
    reference, *others = runs.values()
    return max((abs(run["stats"][k] - reference["stats"][k]) for run in others for k in STAT_NAMES), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "coco_eval.json"))
    args = parser.parse_args()
    backends = ["pycocotools"] + (["faster_coco_eval"] if installed("faster_coco_eval") else [])
    gt = coco_val_like(args.images)
    results = perturbed_detections(gt)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes "
          f"({sum(a['iscrowd'] for a in gt['annotations'])} crowd), {len(results)} detections")
    if len(backends) == 1:
        print("faster-coco-eval is not installed (pip install 'resnet-detection[fast-eval]'): pycocotools alone")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        gt_path = os.path.join(folder, "instances_val.json")
        with open(gt_path, "w", encoding="utf-8") as handle:
            json.dump(gt, handle)
        for backend in backends:
            runs[backend] = time_backend(backend, gt_path, results)
            print(f"{backend:<17} " + "  ".join(f"{k} {v:.2f}s" for k, v in runs[backend]["seconds"].items()))
            print(" " * 18 + "  ".join(f"{k} {runs[backend]['stats'][k]:.3f}" for k in STAT_NAMES))
    difference = largest_difference(runs)
    agree = difference <= TOLERANCE
    if len(runs) > 1:
        print(f"the backends {'agree' if agree else 'DISAGREE'}: largest difference {difference:.2e} "
              f"percent (tolerance {TOLERANCE:g})")
        print(f"faster_coco_eval takes {runs['faster_coco_eval']['seconds']['total'] / runs['pycocotools']['seconds']['total']:.2f}x "
              "the time of pycocotools")
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"images": args.images, "boxes": len(gt["annotations"]), "detections": len(results),
                   "runs": runs, "largest_difference": difference, "agree": agree}, handle, indent=1)
    print(f"written to {args.out}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
