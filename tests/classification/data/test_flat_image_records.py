"""The ImageNet classification set keeps its records flat: the ImageRecords come back equal, with the same
training and test samples as the list of records."""

import cv2
import numpy as np
import torch

from classification.data.imagenet import ClassificationDataset, EvalTransform, ImageRecord, TrainTransform
from resnet_engine.flat_records import FlatRecords


def test_image_records_are_flat_and_give_the_samples_of_the_record_list(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for index, name in enumerate(["n01_1", "n02_çà_2", "n03_3"]):
        ok, data = cv2.imencode(".png", rng.integers(0, 256, (70 + 10 * index, 90, 3), dtype=np.uint8))
        assert ok
        (tmp_path / f"{name}.JPEG").write_bytes(data.tobytes())
        records.append(ImageRecord(name, str(tmp_path / f"{name}.JPEG"), 998 - index))
    for train, transform in ((True, TrainTransform([64, 72], 56)), (False, EvalTransform("10crop", 64, 56))):
        flat = ClassificationDataset(records, transform, train=train)
        assert isinstance(flat.records, FlatRecords) and list(flat.records) == records
        as_list = ClassificationDataset(records, transform, train=train)
        as_list.records = records
        for index in range(len(records)):
            got, want = flat[(index, 5)], as_list[(index, 5)]
            assert (got["label"], got["image_id"]) == (want["label"], want["image_id"]) == (998 - index,
                                                                                            records[index].image_id)
            if train:
                pairs = [(got["image"], want["image"])]
            else:
                pairs = list(zip(got["views"], want["views"], strict=True))
            assert len(pairs) == (1 if train else 10)
            assert all(torch.equal(a, b) for a, b in pairs)
