"""Image decoding (EXIF orientation) and the (H, W, C) -> (C, H, W) conversion."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data.coco import CocoDetection
from detection.data.image_io import read_image, to_chw_tensor
from detection.data.transforms import TrainTransform

# --------------------------------------------------------------------------------------------- to_chw_tensor


def plain_transpose(image: np.ndarray) -> np.ndarray:
    return (image[None] if image.ndim == 2 else image.transpose(2, 0, 1)).copy()


@pytest.mark.parametrize("make", [
    lambda rng: rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
    lambda rng: rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)[:, ::-1],  # a flip's non-contiguous view
    lambda rng: rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)[::2, 5:58],
    lambda rng: (rng.random((37, 53, 3)) * 255).astype(np.float32),  # colour-jittered training pixels
    lambda rng: (rng.random((37, 53, 3)) * 255).astype(np.float32)[:, ::-1],
    lambda rng: rng.random((37, 53, 3)),  # float64
    lambda rng: rng.integers(0, 256, (37, 53), dtype=np.uint8),  # 2-D grayscale
    lambda rng: rng.integers(0, 256, (37, 53, 4), dtype=np.uint8),
    lambda rng: rng.integers(0, 256, (37, 53, 1), dtype=np.uint8),
    lambda rng: (rng.random((37, 53)) * 255).astype(np.float32),  # a float 2-D plane
], ids=["uint8", "uint8-flipped", "uint8-strided", "float32", "float32-flipped", "float64", "gray-2d", "uint8-4ch",
        "uint8-1ch", "float32-2d"])
def test_chw_conversion_equals_a_plain_transpose(make):
    image = make(np.random.default_rng(0))
    expected = plain_transpose(image)
    for _ in range(3):  # uninitialized memory would differ from call to call
        chw = to_chw_tensor(image)
        assert chw.is_contiguous() and chw.dtype == torch.from_numpy(expected).dtype
        assert np.array_equal(chw.numpy(), expected)


# --------------------------------------------------------------------------------------------- EXIF orientation

EXIF_ORIENTATION = 0x0112
STORED_BOX = (10, 5, 20, 15)  # x1, y1, x2, y2 of the bright square in the stored pixels


def write_rotated_jpeg(path, orientation=6) -> np.ndarray:
    """A 40x60 (height x width) dark JPEG with a bright square at STORED_BOX, tagged with an EXIF
    orientation (6: a viewer turns it 90 degrees clockwise); returns the stored pixels as decoded."""
    pixels = np.full((40, 60, 3), 30, np.uint8)
    x1, y1, x2, y2 = STORED_BOX
    pixels[y1:y2, x1:x2] = 230
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as decoded:  # PIL does not apply the orientation unless asked
        assert decoded.getexif()[EXIF_ORIENTATION] == orientation
        return np.asarray(decoded.convert("RGB"))


def test_stored_pixels_by_default_upright_on_request(tmp_path):
    stored = write_rotated_jpeg(tmp_path / "photo.jpg")
    plain = read_image(str(tmp_path / "photo.jpg"))
    assert plain.shape == (40, 60, 3)
    assert np.abs(plain.astype(int) - stored).max() <= 2  # two JPEG decoders
    upright = read_image(str(tmp_path / "photo.jpg"), apply_exif_orientation=True)
    assert np.array_equal(upright, np.rot90(plain, k=-1))  # orientation 6: 90 degrees clockwise


def single_image_dataset(tmp_path, width, height, box_xyxy, transform=None, train=False):
    x1, y1, x2, y2 = box_xyxy
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photo.jpg", "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "square"}]}))
    return CocoDetection(str(tmp_path / "ann.json"), str(tmp_path), transform, train=train)


def mean_inside(chw: torch.Tensor, box) -> float:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    return float(chw[:, y1:y2, x1:x2].float().mean())


def test_boxes_stay_on_the_stored_pixels_of_a_rotated_jpeg(tmp_path, recwarn):
    """COCO's convention: the json's 60x40 are the stored pixels; the orientation tag is ignored."""
    write_rotated_jpeg(tmp_path / "photo.jpg")
    test_set = single_image_dataset(tmp_path, 60, 40, STORED_BOX)
    sample = test_set[0]
    assert sample["image"].shape == (3, 40, 60) and (sample["height"], sample["width"]) == (40, 60)
    assert mean_inside(sample["image"], STORED_BOX) > 200
    train_set = single_image_dataset(tmp_path, 60, 40, STORED_BOX, TrainTransform([40], 1000, 0.0), train=True)
    sample = train_set[(0, 0)]
    assert sample["image"].shape == (3, 40, 60)
    assert sample["boxes"].tolist() == [list(map(float, STORED_BOX))]  # not scaled by 40/60 and 60/40
    assert mean_inside(sample["image"], sample["boxes"][0]) > 200
    assert not [w for w in recwarn if "stretched" in str(w.message)]


def test_files_annotated_upright_are_read_upright(tmp_path):
    """A json with the displayed size (40x60) was annotated on the upright image: its boxes refer to it."""
    write_rotated_jpeg(tmp_path / "photo.jpg")
    x1, y1, x2, y2 = STORED_BOX
    upright_box = (40 - y2, x1, 40 - y1, x2)  # 90 degrees clockwise in a 40-pixel-high image
    sample = single_image_dataset(tmp_path, 40, 60, upright_box)[0]
    assert sample["image"].shape == (3, 60, 40)
    assert mean_inside(sample["image"], upright_box) > 200


def test_a_size_that_changes_the_shape_of_the_boxes_is_reported(tmp_path):
    write_rotated_jpeg(tmp_path / "photo.jpg", orientation=1)
    dataset = single_image_dataset(tmp_path, 60, 60, STORED_BOX, TrainTransform([40], 1000, 0.0), train=True)
    with pytest.warns(UserWarning, match=r"photo.jpg: the json gives 60x60 pixels but the file holds 60x40"):
        dataset[(0, 0)]


def test_detections_on_a_file_resized_on_disk_come_back_in_the_jsons_pixels(tmp_path, recwarn):
    """The json gives 120x80 and its box in those pixels; the file on disk was halved to 60x40. A test
    sample reports the json's size, so the model scales its detections to the ground truth's pixels."""
    from detection.data.transforms import EvalTransform
    from detection.modeling.faster_rcnn import FasterRCNN
    write_rotated_jpeg(tmp_path / "photo.jpg", orientation=1)
    json_box = tuple(2 * v for v in STORED_BOX)
    sample = single_image_dataset(tmp_path, 120, 80, json_box, EvalTransform(80, 1000))[0]
    assert (sample["height"], sample["width"]) == (80, 120)  # not the file's 40x60
    network_size = tuple(sample["image"].shape[-2:])
    assert network_size == (80, 120)  # the 40x60 file resized to the 80-pixel test scale
    bright = [v * 2 for v in STORED_BOX]  # where the square is in the network input
    assert mean_inside(sample["image"], bright) > 200
    detections = {"boxes": torch.tensor([bright], dtype=torch.float32)}
    back = FasterRCNN.to_original_size(detections, sample, network_size)
    assert back["boxes"].tolist() == [list(map(float, json_box))]
    assert not [w for w in recwarn if "stretched" in str(w.message)]


def test_a_test_image_whose_file_has_another_shape_is_reported(tmp_path):
    write_rotated_jpeg(tmp_path / "photo.jpg", orientation=1)
    dataset = single_image_dataset(tmp_path, 60, 60, STORED_BOX)
    with pytest.warns(UserWarning, match=r"photo.jpg: .*file holds 60x40; the detections are stretched back"):
        sample = dataset[0]
    assert (sample["height"], sample["width"]) == (60, 60)
