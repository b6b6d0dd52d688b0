"""localization/evaluation/rpn_evaluation.py: each ranked class, and each ground-truth class, is paired with
the localizer's box for that class (a stub localizer gives known per-class boxes)."""

import os

import torch

from classification.data.ilsvrc import read_synsets
from localization.evaluation.rpn_evaluation import build_loc_test_set, localize_dataset
from localization.evaluation.submission import val_ground_truth
from tests.localization.test_rpn_localizer import tiny_config, tiny_root  # noqa: F401 - a fixture


class StubLocalizer(torch.nn.Module):
    """Class c's box is (c, c, c + 10, c + 10); its score c ranks the classes 5, 4, 3, 2, 1, 0."""

    device = torch.device("cpu")

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def localize(self, views, geometries, size, flip):
        c = torch.arange(self.num_classes, dtype=torch.float32)
        return torch.stack([c, c, c + 10, c + 10], 1), c.clone()


def test_each_guess_and_ground_truth_class_gets_its_own_box(tiny_root, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_root, tmp_path, "test.mode=1crop")
    synsets = read_synsets(os.path.join(tiny_root, "LOC_synset_mapping.txt"))
    dataset = build_loc_test_set(cfg, synsets)
    truth = val_ground_truth(cfg, synsets, [r.image_id for r in dataset.records])
    guesses = localize_dataset(StubLocalizer(len(synsets.wnids)), dataset, cfg, truth.classes, progress=False)
    assert len(guesses) == len(truth.objects) > 0
    for image_id, guess in guesses.items():
        assert guess.ranking == [5, 4, 3, 2, 1]
        for c in set(guess.ranking) | set(truth.classes[image_id]):
            assert guess.boxes[c] == (c, c, c + 10, c + 10), (image_id, c)


def test_val_images_resized_on_disk_are_refused_before_scoring(tiny_root, tmp_path):  # noqa: F811
    """A resized copy of the val images with the original LOC_val_solution.csv: boxes of the original
    pixels were scored against guesses in the file's pixels (every error wrong, without a word)."""
    import shutil

    import cv2
    import pytest

    from localization.evaluation.submission import val_records_ground_truth
    from resnet_engine.errors import UserError

    synsets = read_synsets(os.path.join(tiny_root, "LOC_synset_mapping.txt"))
    cfg = tiny_config(tiny_root, tmp_path, "test.mode=1crop")
    dataset = build_loc_test_set(cfg, synsets)
    truth = val_records_ground_truth(cfg, synsets, dataset.records)  # the original images hold their boxes
    assert truth.objects == val_ground_truth(cfg, synsets, [r.image_id for r in dataset.records]).objects
    resized_root = tmp_path / "resized"
    shutil.copytree(tiny_root, resized_root)
    for dirpath, _, files in os.walk(resized_root / "ILSVRC" / "Data" / "CLS-LOC" / "val"):
        for name in files:
            path = os.path.join(dirpath, name)
            image = cv2.imread(path)
            cv2.imwrite(path, cv2.resize(image, (image.shape[1] // 3, image.shape[0] // 3)))
    cfg = tiny_config(str(resized_root), tmp_path, "test.mode=1crop")
    with pytest.raises(UserError, match=r"LOC_val_solution.csv: the boxes of \d+ of \d+ images tried lie outside"):
        val_records_ground_truth(cfg, synsets, build_loc_test_set(cfg, synsets).records)
