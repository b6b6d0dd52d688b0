"""Detections gathered from two CPU processes (gloo): the main process gets what one process alone finds,
in the same order; the other process keeps nothing."""

import json
import os

import numpy as np
import torch
import torch.multiprocessing as mp

from detection.evaluation.coco_eval import gather_test_results
from resnet_engine import distributed
from resnet_engine.loaders import build_test_loader
from tests.resnet_engine.test_distributed import free_port

# Image ids in no sorted order, so that a merge that sorted by id would put them out of the test set's order;
# seven images, so that the two shares differ in size.
IMAGE_IDS = [7, 3, 11, 5, 2, 9, 4]
UNREADABLE = {9: "val/9.png"}
EMPTY = {11}  # an image without any detection


def detections_of(image_id: int) -> list[dict]:
    """Made-up COCO results of one image, the same on any process."""
    if image_id in EMPTY:
        return []
    rng = np.random.default_rng(image_id)
    return [{"image_id": image_id, "category_id": int(rng.integers(1, 4)),
             "bbox": [round(float(v), 3) for v in rng.uniform(0, 50, 4)], "score": round(float(rng.random()), 5)}
            for _ in range(int(rng.integers(1, 5)))]


def share_of_this_process() -> list[int]:
    """The image ids of this process's share of the test set, as run_inference reads it."""
    samples = [{"image_id": image_id} for image_id in IMAGE_IDS]
    return [sample["image_id"] for batch in build_test_loader(samples, batch_size=2, num_workers=0) for sample in batch]


def detect_share() -> tuple[list[dict], list[tuple[int, str]]]:
    """This process's detections and unreadable images."""
    results, unreadable = [], []
    for image_id in share_of_this_process():
        if image_id in UNREADABLE:
            unreadable.append((image_id, UNREADABLE[image_id]))
        else:
            results.extend(detections_of(image_id))
    return results, unreadable


def rank_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_distributed(torch.device("cpu"), timeout_minutes=2)
    results, unreadable = detect_share()
    share = sorted(share_of_this_process())
    gathered, all_unreadable = gather_test_results(results, unreadable, IMAGE_IDS)
    distributed.leave_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump({"share": share, "results": gathered, "unreadable": all_unreadable}, handle)


def test_two_processes_gather_on_the_main_process_what_one_process_finds(tmp_path):
    mp.spawn(rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [seen["share"] for seen in ranks] == [[2, 4, 7, 11], [3, 5, 9]]  # every second image each
    alone, unreadable_alone = gather_test_results(*detect_share(), IMAGE_IDS)  # no process group
    expected = [record for image_id in IMAGE_IDS for record in detections_of(image_id) if image_id not in UNREADABLE]
    assert alone == expected and len(expected) > 10
    assert ranks[0]["results"] == expected  # every detection, in the test set's order, per image as detected
    assert ranks[1]["results"] == []  # the bulk stays on the main process alone
    assert unreadable_alone == [(9, "val/9.png")]
    assert [seen["unreadable"] for seen in ranks] == [[[9, "val/9.png"]]] * 2  # json: lists for tuples
