"""Reading ILSVRC CLS-LOC annotations with and without the annotation cache, on a generated tree.

    python benchmarks/bench_ilsvrc_cache.py [--files 100000] [--out benchmarks/results/ilsvrc_cache.json]

Writes ``--files`` devkit XML files (1 to 3 boxes each, 100 per WNID folder, as the train tree is laid
out), a Kaggle solution CSV with the same boxes and a classification train tree of as many (empty)
JPEG files into a temporary folder, then times, for each form: the parse (or the listing of the class
folders) without the cache, the first read with the cache (the parse and the cache file written), and
a second read (the key checked and the cache file loaded). The cached result is checked against the
fresh one. The cache goes to a temporary folder too; nothing outside it is touched.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from classification.data.ilsvrc import (  # noqa: E402
    Synsets,
    parse_xml_dir,
    read_kaggle_rows,
    read_kaggle_solution,
    read_xml_dir,
)
from classification.data.imagenet import list_train_images  # noqa: E402
from resnet_engine.file_cache import CACHE_ENV  # noqa: E402

FILES_PER_FOLDER = 100


def xml_text(stem: str, boxes: np.ndarray, wnid: str) -> str:
    objects = "".join(f"<object><name>{wnid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                      f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>\n" for b in boxes)
    return (f"<annotation>\n<folder>{wnid}</folder>\n<filename>{stem}</filename>\n"
            f"<size><width>500</width><height>375</height><depth>3</depth></size>\n{objects}</annotation>\n")


def write_tree(folder: str, files: int) -> tuple[str, str]:
    """(the XML folder, the solution CSV) of ``files`` images with random boxes."""
    rng = np.random.default_rng(0)
    xml_dir = os.path.join(folder, "Annotations")
    rows = ["ImageId,PredictionString"]
    for index in range(files):
        wnid = f"n{index // FILES_PER_FOLDER:08d}"
        stem = f"{wnid}_{index}"
        corners = rng.integers(0, 200, (rng.integers(1, 4), 2))
        boxes = np.concatenate([corners, corners + rng.integers(1, 200, corners.shape)], axis=1)
        os.makedirs(os.path.join(xml_dir, wnid), exist_ok=True)
        with open(os.path.join(xml_dir, wnid, stem + ".xml"), "w", encoding="utf-8") as handle:
            handle.write(xml_text(stem, boxes, wnid))
        rows.append(f"{stem}," + " ".join(f"{wnid} {' '.join(map(str, b))}" for b in boxes))
    csv_path = os.path.join(folder, "LOC_train_solution.csv")
    with open(csv_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(rows) + "\n")
    return xml_dir, csv_path


def write_train_tree(folder: str, files: int) -> tuple[str, Synsets]:
    """(the data root, its synsets) of a classification train tree of ``files`` empty JPEG files, 100 per
    WNID folder: the listing reads names, not pixels."""
    train_dir = os.path.join(folder, "ILSVRC", "Data", "CLS-LOC", "train")
    wnids = []
    for index in range(files):
        wnid = f"n{index // FILES_PER_FOLDER:08d}"
        if not wnids or wnids[-1] != wnid:
            wnids.append(wnid)
            os.makedirs(os.path.join(train_dir, wnid))
        open(os.path.join(train_dir, wnid, f"{wnid}_{index}.JPEG"), "wb").close()
    return folder, Synsets(tuple(wnids), tuple(wnids), "generated")


def listing_without_cache(root: str, synsets: Synsets):
    previous = os.environ[CACHE_ENV]
    os.environ[CACHE_ENV] = "off"
    try:
        return list_train_images(root, synsets)
    finally:
        os.environ[CACHE_ENV] = previous


def timed(function, *args):
    gc.collect()  # a collection of the previous step's objects is not this step's cost
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def measure(name: str, parse, cached_read, *source) -> dict:
    fresh, parse_s = timed(parse, *source)
    first, build_s = timed(cached_read, *source)
    second, read_s = timed(cached_read, *source)
    if not fresh == first == second:
        raise SystemExit(f"error: the cached {name} differs from a fresh parse")
    print(f"{name:>7}: without cache {parse_s:8.2f} s   building the cache {build_s:8.2f} s   "
          f"with cache {read_s:8.2f} s   ({parse_s / read_s:.1f}x)", flush=True)
    return {"without_cache_s": parse_s, "build_cache_s": build_s, "with_cache_s": read_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="XML files (and CSV rows) to generate")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "ilsvrc_cache.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["RESNET_DETECTION_ANNOTATION_CACHE"] = os.path.join(folder, "cache")  # read at each call
        start = time.perf_counter()
        xml_dir, csv_path = write_tree(folder, args.files)
        print(f"{args.files} XML files and CSV rows written in {time.perf_counter() - start:.1f} s", flush=True)
        results = {"files": args.files,
                   "xml": measure("xml", parse_xml_dir, read_xml_dir, xml_dir),
                   "csv": measure("csv", lambda path: read_kaggle_rows(path, is_ground_truth=True),
                                  read_kaggle_solution, csv_path)}
        root, synsets = write_train_tree(os.path.join(folder, "classification"), args.files)
        results["listing"] = measure("listing", listing_without_cache, list_train_images, root, synsets)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
