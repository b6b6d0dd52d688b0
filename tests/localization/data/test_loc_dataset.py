"""The localization data that training and evaluation share: the boxed training list read from
LOC_train_solution.csv, test views with their mirror images, test samples that carry the image, and the
backbone section a checkpoint's network is built from."""

import logging
import os
import warnings

import cv2
import numpy as np
import pytest
import torch

from backbones.config import BackboneConfig
from classification.config import backbone_without_weights
from classification.data.ilsvrc import Synsets
from classification.data.imagenet import DATA_DIR, ImageRecord, labelled_train_images, list_val_images
from localization.data.loc_dataset import (
    BoxedRecord,
    ImageAndViews,
    LocalizationDataset,
    LocEvalTransform,
    LocTrainTransform,
    ViewGeometry,
    list_boxed_train_images,
    with_mirror_images,
)
from resnet_engine.errors import UserError

SYNSETS = Synsets(("n01", "n02"), ("first", "second"))


def write_train_csv(root) -> str:
    # n01_1 lives in its class folder and holds a box of another class; x_2's id names no class.
    (root / "LOC_train_solution.csv").write_text("ImageId,PredictionString\n"
                                                 "x_2,n02 0 0 4 4\n"
                                                 "n01_1,n01 1 2 10 12 n02 3 3 5 5\n")
    train_dir = os.path.join(str(root), DATA_DIR, "train")
    for wnid, image_id in (("n02", "x_2"), ("n01", "n01_1")):
        os.makedirs(os.path.join(train_dir, wnid), exist_ok=True)
        cv2.imwrite(os.path.join(train_dir, wnid, f"{image_id}.JPEG"), np.zeros((20, 24, 3), np.uint8))
    return train_dir


def test_the_training_list_labels_each_image_by_its_folder_else_its_first_box(tmp_path):
    train_dir = write_train_csv(tmp_path)
    labelled = labelled_train_images(str(tmp_path), SYNSETS)
    assert [record for record, _ in labelled] == [
        ImageRecord("n01_1", os.path.join(train_dir, "n01", "n01_1.JPEG"), 0),
        ImageRecord("x_2", os.path.join(train_dir, "n02", "x_2.JPEG"), 1)]
    assert [objects for _, objects in labelled] == [[("n01", (1, 2, 10, 12)), ("n02", (3, 3, 5, 5))],
                                                    [("n02", (0, 0, 4, 4))]]


def test_the_boxed_training_list_keeps_the_boxes_of_the_images_class(tmp_path):
    train_dir = write_train_csv(tmp_path)
    assert list_boxed_train_images(str(tmp_path), SYNSETS) == [
        BoxedRecord("n01_1", os.path.join(train_dir, "n01", "n01_1.JPEG"), 0, ((1, 2, 10, 12),)),
        BoxedRecord("x_2", os.path.join(train_dir, "n02", "x_2.JPEG"), 1, ((0, 0, 4, 4),))]


def test_images_without_a_box_of_their_class_are_counted(tmp_path, caplog):
    write_train_csv(tmp_path)
    with open(tmp_path / "LOC_train_solution.csv", "a", encoding="utf-8") as handle:
        handle.write("n01_3,n02 1 1 4 4\n")  # its folder's class n01 has no box
    with caplog.at_level(logging.INFO, logger="localization.data.loc_dataset"):
        assert len(list_boxed_train_images(str(tmp_path), SYNSETS)) == 2
    assert caplog.messages[-1].endswith("LOC_train_solution.csv: 1 of 3 images have no box of their own class and "
                                        "are not trained on")


def test_a_wrong_image_folder_and_an_unlabelled_row_are_one_line(tmp_path):
    """Every image would otherwise be skipped with a warning of its own before the run fails."""
    write_train_csv(tmp_path)
    os.rename(tmp_path / DATA_DIR / "train", tmp_path / DATA_DIR / "training")
    with pytest.raises(UserError, match=r"none of 2 images of .*LOC_train_solution.csv tried is where the toolkit "
                                        r"reads it, e.g. .*train/n01/n01_1.JPEG: set data.root to the folder whose "
                                        r"images are laid out as .*train/<wnid>/<image id>.JPEG"):
        list_boxed_train_images(str(tmp_path), SYNSETS)
    (tmp_path / "LOC_train_solution.csv").write_text("ImageId,PredictionString\nimg_7,\n")
    with pytest.raises(UserError, match=r"LOC_train_solution.csv: image img_7 has no box and its id does not start "
                                        r"with a WNID, so it has no label"):
        labelled_train_images(str(tmp_path), SYNSETS)


def test_boxes_in_other_pixels_than_the_images_are_one_line_and_a_single_one_a_warning(tmp_path):
    """A resized copy of ImageNet with the original CSV: every box lies past its (20x24) image."""
    train_dir = write_train_csv(tmp_path)
    (tmp_path / "LOC_train_solution.csv").write_text("ImageId,PredictionString\n"
                                                     "x_2,n02 0 0 40 40\n"
                                                     "n01_1,n01 10 12 46 30\n")
    with pytest.raises(UserError, match=r"LOC_train_solution.csv: the boxes of 2 of 2 images tried lie outside their "
                                        r"image, e.g. .*n01_1.JPEG \(24x20\) has \[10.0, 12.0, 46.0, 30.0\]: the "
                                        r"CSV gives the original images' pixels; use the original images"):
        list_boxed_train_images(str(tmp_path), SYNSETS)
    (tmp_path / "LOC_train_solution.csv").write_text("ImageId,PredictionString\n"
                                                     "x_2,n02 0 0 40 40\n"
                                                     "n01_1,n01 10 12 23 19\n")
    records = list_boxed_train_images(str(tmp_path), SYNSETS)
    dataset = LocalizationDataset(records, LocTrainTransform([20, 20], 20), train=True)
    with pytest.warns(UserWarning, match=r"x_2.JPEG: a box of LOC_train_solution.csv reaches past the 24x20 image"):
        dataset[(1, 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[(0, 0)]
    assert os.path.dirname(records[0].path) == os.path.join(train_dir, "n01")


def test_val_images_are_read_flat_or_in_class_folders(tmp_path):
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                                   "ILSVRC2012_val_00000001,n02 1 1 5 5\n"
                                                   "ILSVRC2012_val_00000002,n01 2 2 6 6 n02 1 1 3 3\n")
    val_dir = tmp_path / DATA_DIR / "val"
    with pytest.raises(UserError, match=r"none of 2 images of .*LOC_val_solution.csv tried .* laid out as "
                                        r".*val/<image id>.JPEG \(or .*val/<wnid>/<image id>.JPEG\)"):
        list_val_images(str(tmp_path), SYNSETS)
    for wnid, number in (("n02", 1), ("n01", 2)):
        os.makedirs(val_dir / wnid, exist_ok=True)
        cv2.imwrite(str(val_dir / wnid / f"ILSVRC2012_val_0000000{number}.JPEG"), np.zeros((8, 8, 3), np.uint8))
    assert list_val_images(str(tmp_path), SYNSETS) == [
        ImageRecord("ILSVRC2012_val_00000001", str(val_dir / "n02" / "ILSVRC2012_val_00000001.JPEG"), 1),
        ImageRecord("ILSVRC2012_val_00000002", str(val_dir / "n01" / "ILSVRC2012_val_00000002.JPEG"), 0)]
    for wnid, number in (("n02", 1), ("n01", 2)):
        os.rename(val_dir / wnid / f"ILSVRC2012_val_0000000{number}.JPEG", val_dir / f"ILSVRC2012_val_0000000{number}.JPEG")
    assert [record.path for record in list_val_images(str(tmp_path), SYNSETS)] == [
        str(val_dir / "ILSVRC2012_val_00000001.JPEG"), str(val_dir / "ILSVRC2012_val_00000002.JPEG")]


def test_each_view_is_followed_by_its_mirror_image():
    views = [torch.arange(18).view(3, 2, 3), torch.arange(12).view(3, 2, 2)]
    geometries = [ViewGeometry(0.5, 0.25, 4.0, 1.0), ViewGeometry(2.0, 2.0)]
    variants = with_mirror_images(views, geometries, flip=True)
    assert [g for _, g in variants] == [geometries[0], ViewGeometry(0.5, 0.25, 4.0, 1.0, flipped=True),
                                        geometries[1], ViewGeometry(2.0, 2.0, flipped=True)]
    assert variants[1][0].tolist() == [[[2, 1, 0], [5, 4, 3]], [[8, 7, 6], [11, 10, 9]],
                                       [[14, 13, 12], [17, 16, 15]]]
    assert [v is view for (v, _), view in zip(with_mirror_images(views, geometries, flip=False), views)] == [True,
                                                                                                           True]


def test_rcnn_test_samples_carry_the_image_and_none_when_it_cannot_be_read(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    (tmp_path / "b.png").write_bytes(b"not an image")
    records = [BoxedRecord("a", str(tmp_path / "a.png"), 1, ()), BoxedRecord("b", str(tmp_path / "b.png"), 0, ())]
    dataset = ImageAndViews(records, LocEvalTransform("1crop", 10, 8), train=False)
    sample = dataset[0]
    assert torch.equal(sample["image"], torch.from_numpy(pixels).permute(2, 0, 1))
    assert (sample["size"], sample["label"], len(sample["views"])) == ((10, 12), 1, 1)
    with pytest.warns(UserWarning, match="skipping: .*b.png"):
        unreadable = dataset[1]
    assert (unreadable["image"], unreadable["views"]) == (None, None)


def test_a_checkpoints_network_starts_from_the_backbone_section_without_weights():
    section = BackboneConfig(depth=18, weights="torchvision:IMAGENET1K_V1", base_width=8, norm="bn")
    copy = backbone_without_weights(section)
    assert (copy.weights, copy.depth, copy.base_width, copy.norm) == (None, 18, 8, "bn")
    assert section.weights == "torchvision:IMAGENET1K_V1"


def test_the_localizer_crops_as_the_classifier_does_for_a_seed():
    """One home for the augmentation's draws: a seed gives the localizer the classifier's crop, flip,
    colour and lighting, and the boxes follow that crop."""
    from classification.data.imagenet import TrainTransform
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 20.0, 129.0, 79.0]], np.float32)  # inclusive pixels, most of the image
    for seed in range(12):
        crop, targets, _ = LocTrainTransform([64, 96], 56, color_jitter=0.4, min_visible=0.0)(image, boxes, seed)
        assert np.array_equal(crop, TrainTransform([64, 96], 56, color_jitter=0.4)(image, seed))
        placement = TrainTransform([64, 96], 56).crop_and_place(image, seed)[1]
        x1 = 10.0 * placement.scale_x - placement.x0
        x2 = 130.0 * placement.scale_x - placement.x0
        expected_x = (56 - min(x2, 56), 56 - max(x1, 0)) if placement.flipped else (max(x1, 0), min(x2, 56))
        assert targets[0, [0, 2]] == pytest.approx(expected_x, abs=1e-4)
