"""The boxed training set keeps its records flat: the BoxedRecords read from LOC_train_solution.csv come
back equal, and its training samples are those of the list of records."""

import os

import cv2
import numpy as np
import torch

from classification.data.ilsvrc import Synsets
from classification.data.imagenet import DATA_DIR
from localization.data.loc_dataset import LocalizationDataset, LocTrainTransform, list_boxed_train_images
from resnet_engine.flat_records import FlatRecords

SYNSETS = Synsets(("n01", "n02"), ("first", "second"))


def write_boxed_set(root) -> None:
    """Three training images; n01_1 has two boxes of its class and one of another, ü_3 a unicode id."""
    (root / "LOC_train_solution.csv").write_text("ImageId,PredictionString\n"
                                                 "n01_1,n01 1 2 10 12 n02 3 3 5 5 n01 4.5 0 30 20\n"
                                                 "n02_2,n02 0 0 14 9\n"
                                                 "n02_ü_3,n02 2 5 20 25\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    for wnid, image_id in (("n01", "n01_1"), ("n02", "n02_2"), ("n02", "n02_ü_3")):
        folder = os.path.join(str(root), DATA_DIR, "train", wnid)
        os.makedirs(folder, exist_ok=True)
        ok, data = cv2.imencode(".png", rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
        assert ok
        with open(os.path.join(folder, image_id + ".JPEG"), "wb") as handle:  # cv2.imwrite cannot take ü
            handle.write(data.tobytes())


def test_boxed_records_are_flat_and_give_the_samples_of_the_record_list(tmp_path):
    write_boxed_set(tmp_path)
    records = list_boxed_train_images(str(tmp_path), SYNSETS)
    assert [len(record.boxes) for record in records] == [2, 1, 1]
    transform = LocTrainTransform([32, 40], 24)
    flat = LocalizationDataset(records, transform, train=True)
    assert isinstance(flat.records, FlatRecords)
    assert list(flat.records) == records
    assert flat.records[0].boxes == ((1.0, 2.0, 10.0, 12.0), (4.5, 0.0, 30.0, 20.0))
    as_list = LocalizationDataset(records, transform, train=True)
    as_list.records = records
    for index in range(len(records)):
        for seed in (0, 7, 99):
            got, want = flat[(index, seed)], as_list[(index, seed)]
            assert sorted(got) == sorted(want)
            assert got["seed"] == seed  # the model's anchor sampling stream
            for key, value in want.items():
                assert torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value, key
