"""The memory of a COCO-train-sized training set in the parent and in forked data-loader workers.

    python benchmarks/bench_dataset_memory.py [--dataset coco] [--images 118287]
                                              [--out benchmarks/results/dataset_memory.json]

Writes into a temporary folder a COCO-format json of ``--images`` images (COCO train2017 has 118,287)
with 7.3 boxes per image on average (random sizes) over COCO's 80 category ids between 1 and 90;
every image entry names the same small JPEG, since the records are what is measured. It times reading
the json with pycocotools alone and building the training set through detection.data.loader.
build_train_dataset (what tools/train_det.py uses), then reports the parent's memory (RSS, and USS:
its private pages) and the private memory of 4 forked workers (what DataLoader starts on Linux)
after they read every record once between them, each its share, through ``dataset.records[index]``
as CocoDetection.__getitem__ does, without decoding images. Each worker then runs a full garbage
collection, as a long run's worker eventually does: it writes to the header of every Python object
it visits, which copies the page that holds it.

A worker's private memory is Private_Clean + Private_Dirty of /proc/PID/smaps_rollup: the pages that
it no longer shares with the parent.

``--dataset imagenet`` (default 1,281,167 images of 1,000 classes) and ``--dataset clsloc`` (544,546
images with 1 to 3 boxes) measure the ImageNet classification and CLS-LOC training sets the same way,
their records generated in memory (ImageRecord, BoxedRecord: what the file listing and the annotation
parse give, which bench_ilsvrc_cache.py times) and handed to ClassificationDataset and
LocalizationDataset; the reference time is then that of making the list of records.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from classification.data.imagenet import ClassificationDataset, ImageRecord  # noqa: E402
from detection.config import load_detection_config  # noqa: E402
from detection.data.loader import build_train_dataset  # noqa: E402
from localization.data.loc_dataset import BoxedRecord, LocalizationDataset  # noqa: E402

WORKERS = 4
BOXES_PER_IMAGE = 7.3
# COCO's 80 category ids: 1..90 less the 10 that the 2014 release left unused.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def write_annotations(folder: str, images: int) -> tuple[str, str]:
    """(the json, the image folder) of ``images`` image entries that all name one 64x48 JPEG."""
    rng = np.random.default_rng(0)
    img_dir = os.path.join(folder, "images")
    os.makedirs(img_dir)
    cv2.imwrite(os.path.join(img_dir, "image.jpg"), np.full((48, 64, 3), 90, np.uint8))
    widths = rng.integers(320, 641, images)
    heights = rng.integers(240, 481, images)
    counts = rng.poisson(BOXES_PER_IMAGE, images)
    owners = np.repeat(np.arange(images), counts)
    x = rng.uniform(0, widths[owners] - 2)
    y = rng.uniform(0, heights[owners] - 2)
    w = rng.uniform(1, widths[owners] - x)
    h = rng.uniform(1, heights[owners] - y)
    categories = rng.choice(COCO_CATEGORY_IDS, len(owners))
    crowd = rng.random(len(owners)) < 0.01
    data = {
        "images": [{"id": int(i) + 1, "file_name": "image.jpg", "width": int(widths[i]), "height": int(heights[i])}
                   for i in range(images)],
        "annotations": [{"id": k + 1, "image_id": int(owners[k]) + 1, "category_id": int(categories[k]),
                         "bbox": [round(float(x[k]), 2), round(float(y[k]), 2), round(float(w[k]), 2),
                                  round(float(h[k]), 2)],
                         "area": round(float(w[k] * h[k]), 2), "iscrowd": int(crowd[k])}
                        for k in range(len(owners))],
        "categories": [{"id": c, "name": f"category {c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS],
    }
    ann_file = os.path.join(folder, "instances_train.json")
    with open(ann_file, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return ann_file, img_dir


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """The fields of /proc/PID/smaps_rollup, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def private_bytes(pid: int | str = "self") -> int:
    fields = smaps_rollup(pid)
    return fields["Private_Clean"] + fields["Private_Dirty"]


def read_records(dataset, indices) -> int:
    """What __getitem__ reads of each record before it decodes the image; the sum makes each read count."""
    total = 0
    for index in indices:
        record = dataset.records[index]
        if isinstance(record, dict):  # CocoDetection
            total += len(record["boxes"]) + len(record["labels"]) + len(record["crowd_boxes"])
            total += len(dataset.path_of(record)) + int(record["width"] > 0) + int(record["image_id"] > 0)
        else:  # ImageRecord, BoxedRecord
            total += len(record.path) + len(record.image_id) + int(record.label >= 0)
            total += len(getattr(record, "boxes", ()))
    return total


def worker(dataset, rank: int, ready, results) -> None:
    touched = read_records(dataset, range(rank, len(dataset), WORKERS))
    gc.collect()
    ready.wait()  # each measures once all have read their share: the pages they share are then final
    results.put((rank, touched, private_bytes()))


def measure_workers(dataset) -> list[int]:
    """The private bytes of each of WORKERS forked workers after they read every record between them."""
    context = multiprocessing.get_context("fork")
    ready, results = context.Barrier(WORKERS), context.Queue()
    processes = [context.Process(target=worker, args=(dataset, rank, ready, results)) for rank in range(WORKERS)]
    for process in processes:
        process.start()
    measured = dict((rank, (touched, private)) for rank, touched, private in (results.get() for _ in processes))
    for process in processes:
        process.join()
    if sum(touched for touched, _ in measured.values()) != read_records(dataset, range(len(dataset))):
        raise SystemExit("error: the workers did not read every record")
    return [measured[rank][1] for rank in range(WORKERS)]


def timed(function, *args):
    gc.collect()
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def read_with_pycocotools(ann_file: str):
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


def coco_config(ann_file: str, img_dir: str):
    return load_detection_config(os.path.join(ROOT, "configs", "coco_r50_fpn.yaml"),
                                 ["data.synthetic=''", f"data.train.ann_file={ann_file}", f"data.train.img_dir={img_dir}",
                                  "data.train_extra=[]"])


def image_records(images: int, boxed: bool) -> list:
    """ILSVRC-like training records: 1,000 WNID folders, ids <wnid>_<n>, and for CLS-LOC 1 to 3 boxes."""
    rng = np.random.default_rng(0)
    classes = 1000
    records = []
    for index in range(images):
        label = index * classes // images
        wnid = f"n{label + 1000000:08d}"
        image_id = f"{wnid}_{index}"
        path = f"/data/ILSVRC/Data/CLS-LOC/train/{wnid}/{image_id}.JPEG"
        if boxed:
            corners = rng.integers(0, 200, (int(rng.integers(1, 4)), 2)).astype(float)
            boxes = tuple(tuple(row) for row in np.concatenate([corners, corners + 50], axis=1).tolist())
            records.append(BoxedRecord(image_id, path, label, boxes))
        else:
            records.append(ImageRecord(image_id, path, label))
    return records


def measure_build(kind: str, images: int, folder: str) -> tuple:
    """(the training set, what the reference time is, it, the time to build the set, the number of boxes)."""
    if kind == "coco":
        ann_file, img_dir = write_annotations(folder, images)
        coco, reference_s = timed(read_with_pycocotools, ann_file)
        boxes = len(coco.anns)
        del coco
        dataset, build_s = timed(build_train_dataset, coco_config(ann_file, img_dir))
        return dataset, "COCO(ann_file)", reference_s, build_s, boxes
    records, reference_s = timed(image_records, images, kind == "clsloc")
    make = LocalizationDataset if kind == "clsloc" else ClassificationDataset
    dataset, build_s = timed(make, records, None, True)
    del records
    return dataset, "the list of records", reference_s, build_s, sum(len(getattr(r, "boxes", ())) for r in dataset.records)


DEFAULT_IMAGES = {"coco": 118_287, "imagenet": 1_281_167, "clsloc": 544_546}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULT_IMAGES), default="coco")
    parser.add_argument("--images", type=int, help="default: the full training set's (coco 118,287)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "dataset_memory.json"))
    args = parser.parse_args()
    images = args.images or DEFAULT_IMAGES[args.dataset]
    with tempfile.TemporaryDirectory() as folder:
        dataset, reference, reference_s, build_s, boxes = measure_build(args.dataset, images, folder)
        gc.collect()
        parent = smaps_rollup()
        workers = measure_workers(dataset)
    mb = 1024 ** 2
    result = {"dataset": args.dataset, "images": images, "boxes": boxes, "reference": reference,
              "reference_s": round(reference_s, 2), "build_train_dataset_s": round(build_s, 2),
              "parent_rss_mb": round(parent["Rss"] / mb, 1),
              "parent_uss_mb": round((parent["Private_Clean"] + parent["Private_Dirty"]) / mb, 1),
              "worker_private_mb": [round(value / mb, 1) for value in workers]}
    print(f"| dataset | images | boxes | {reference} s | building the training set s | parent RSS MB | "
          f"parent USS MB | private MB of each of {WORKERS} workers |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.dataset} | {images:,} | {boxes:,} | {reference_s:.2f} | {build_s:.2f} "
          f"| {result['parent_rss_mb']:.0f} | {result['parent_uss_mb']:.0f} | "
          f"{', '.join(f'{value:.0f}' for value in result['worker_private_mb'])} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
