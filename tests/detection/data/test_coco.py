"""COCO loading: category mapping, annotation cleaning, unreadable images, decoding, augmentation."""

import gzip
import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detection.data.coco import AnnotationError, CocoDetection
from detection.data.image_io import BadImageError, read_image
from detection.data.transforms import EvalTransform, TrainTransform
from resnet_engine.errors import UserError
from resnet_engine.sampler import GroupedBatchSampler


def write_dataset(root, images, annotations, categories):
    (root / "img").mkdir(exist_ok=True)
    infos = []
    for image_id, (name, height, width) in enumerate(images, start=1):
        cv2.imwrite(str(root / "img" / name), np.full((height, width, 3), 128, np.uint8))
        infos.append({"id": image_id, "file_name": name, "height": height, "width": width})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": infos, "annotations": annotations, "categories": categories}))
    return str(path), str(root / "img")


def ann(ann_id, image_id, category_id, bbox, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": crowd,
            "area": bbox[2] * bbox[3] if len(bbox) == 4 else 0}


CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def test_non_contiguous_category_ids_map_to_contiguous_labels(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60)], [
        ann(1, 1, 90, [1, 1, 10, 10]), ann(2, 1, 1, [5, 5, 10, 10]), ann(3, 1, 18, [20, 5, 10, 10])], CATEGORIES)
    dataset = CocoDetection(ann_file, img_dir, train=False)
    cmap = dataset.category_map
    assert cmap.category_ids == [1, 18, 90] and cmap.names == ["person", "dog", "toothbrush"]
    assert cmap.num_classes == 3
    record = dataset.records[0]
    assert record["labels"].tolist() == [3, 1, 2]
    assert [cmap.category_of(int(label)) for label in record["labels"]] == [90, 1, 18]


def test_bad_annotations_are_clipped_or_dropped_and_counted(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60)], [
        ann(1, 1, 1, [1, 1, 10, 10]),          # fine
        ann(2, 1, 1, [5, 5, 0, 10]),           # zero width: dropped
        ann(3, 1, 1, [5, 5, -3, 10]),          # negative width: dropped
        ann(4, 1, 1, [float("nan"), 5, 3, 3]),  # NaN: dropped
        ann(5, 1, 1, [50, 30, 20, 20]),        # outside on the right/bottom: clipped
        ann(6, 1, 1, [80, 80, 5, 5]),          # entirely outside: dropped
        ann(7, 1, 18, [0, 0, 30, 30], crowd=1),
    ], CATEGORIES)
    with pytest.warns(UserWarning, match=r"4 boxes dropped \(no area or not finite, e.g. annotation id 2\), 1 clipped"):
        dataset = CocoDetection(ann_file, img_dir, train=False)
    record = dataset.records[0]
    assert record["boxes"].tolist() == [[1, 1, 11, 11], [50, 30, 60, 40]]
    assert record["crowd_boxes"].tolist() == [[0, 0, 30, 30]]


def test_missing_and_malformed_files_name_the_file_and_key(tmp_path):
    with pytest.raises(AnnotationError, match=r"annotation file not found: .*nope.json \(set data.train.ann_file="):
        CocoDetection(str(tmp_path / "nope.json"), str(tmp_path))
    (tmp_path / "bad.json").write_text('{"images": [1, 2,')
    with pytest.raises(AnnotationError, match="bad.json: invalid JSON at line 1"):
        CocoDetection(str(tmp_path / "bad.json"), str(tmp_path))
    (tmp_path / "noimages.json").write_text('{"annotations": []}')
    with pytest.raises(AnnotationError, match="no 'images' list"):
        CocoDetection(str(tmp_path / "noimages.json"), str(tmp_path))
    # A results file where the annotations go (eval_det.py's --gt and --det swapped).
    (tmp_path / "detections.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                            "score": 0.9}]))
    with pytest.raises(AnnotationError) as error:
        CocoDetection(str(tmp_path / "detections.json"), str(tmp_path))
    assert str(error.value) == (f"{tmp_path / 'detections.json'}: not a COCO detection file (no 'images' list): it is "
                                "a list of detections, a results file (were --gt and --det swapped?)")
    (tmp_path / "nobbox.json").write_text(json.dumps({"images": [], "categories": [],
                                                      "annotations": [{"id": 4, "image_id": 1, "category_id": 1}]}))
    with pytest.raises(AnnotationError, match="annotation #0 .* lacks bbox"):
        CocoDetection(str(tmp_path / "nobbox.json"), str(tmp_path))
    (tmp_path / "ann.json.gz").write_bytes(gzip.compress(b'{"images": []}'))
    with pytest.raises(AnnotationError, match=r"ann.json.gz: not a UTF-8 JSON file \(a gzip archive: decompress it "
                                              r"first\); byte 1 cannot be decoded"):
        CocoDetection(str(tmp_path / "ann.json.gz"), str(tmp_path))
    (tmp_path / "latin1.json").write_bytes('{"images": [], "categories": [{"id": 1, "name": "café"}]}'.encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin1.json: not a UTF-8 JSON file; byte 52 cannot be decoded"):
        CocoDetection(str(tmp_path / "latin1.json"), str(tmp_path))


def test_annotations_without_objects_are_an_error_and_orphans_are_counted(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60), ("b.jpg", 40, 60)], [], CATEGORIES)
    for train in (True, False):  # zero box losses in training, AP -1 in testing
        with pytest.raises(AnnotationError, match=r"ann.json: no object box in 2 images \(0 annotations; .*\): give the "
                                                  r"objects in its 'annotations' list"):
            CocoDetection(ann_file, img_dir, TrainTransform([32], 100), train=train)
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60), ("b.jpg", 40, 60)], [
        ann(1, 1, 1, [5, 5, 0, 10]), ann(2, 7, 1, [1, 1, 10, 10]), ann(3, 2, 55, [1, 1, 10, 10])], CATEGORIES)
    with pytest.raises(AnnotationError, match=r"no object box in 2 images \(3 annotations; 1 boxes dropped .*, 1 with "
                                              r"unknown category ids ignored, 1 of image ids not in 'images' ignored"):
        CocoDetection(ann_file, img_dir)
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60)], [
        ann(1, 1, 1, [1, 1, 10, 10]), ann(2, 7, 1, [1, 1, 10, 10]), ann(3, 8, 1, [1, 1, 10, 10])], CATEGORIES)
    with pytest.warns(UserWarning, match="2 of image ids not in 'images' ignored"):
        dataset = CocoDetection(ann_file, img_dir)
    assert dataset.records[0]["boxes"].tolist() == [[1, 1, 11, 11]]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][1].pop("file_name"),
     "image #1 (id 2) lacks file_name (each image needs its id and file_name, its path in the image folder)"),
    (lambda d: d["images"][0].update(width="sixty"),
     "image #0 (id 1) has width 'sixty' and height 40: give them in pixels"),
    (lambda d: d["images"][0].update(width=-60),
     "image #0 (id 1) has width -60 and height 40: give them in pixels"),
    (lambda d: d["categories"][2].pop("id"),
     "category #2 (id None) lacks id (each category needs its id, the category_id of its annotations)"),
    (lambda d: d["annotations"][1].update(bbox=["1", 2, 3, 4]),
     "annotation #1 (id 2) has bbox ['1', 2, 3, 4]: give 4 numbers [x, y, width, height]"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
     "annotation #1 (id 2) has bbox [1, 2, 3]: give 4 numbers [x, y, width, height]"),
    (lambda d: d["annotations"][0].update(bbox=None),
     "annotation #0 (id 1) has bbox None: give 4 numbers [x, y, width, height]"),
    (lambda d: d["annotations"].append(5), "annotation #2 (id None) is not an object (each annotation needs id, "
                                           "image_id, category_id and bbox [x, y, width, height])"),
    (lambda d: d["images"][1].update(id="b"),
     "image #1 (id b) has id 'b': ids are integers in COCO files (number the entries 1, 2, ...)"),
    (lambda d: d["annotations"][0].update(image_id="1"),
     "annotation #0 (id 1) has image_id '1': ids are integers in COCO files (number the entries 1, 2, ...)"),
    (lambda d: d["categories"][0].update(id=90.0),
     "category #0 (id 90.0) has id 90.0: ids are integers in COCO files (number the entries 1, 2, ...)"),
    (lambda d: d["annotations"][1].update(iscrowd="0"),
     "annotation #1 (id 2) has iscrowd '0': give 0 (an object) or 1 (a crowd region)"),
    (lambda d: d["images"][1].update(id=1),
     "image #1 has id 1, as image #0 has: give each image an id of its own"),
    (lambda d: d["categories"][2].update(id=90),
     "category #2 has id 90, as category #0 has: give each category an id of its own"),
])
def test_malformed_entries_name_the_file_entry_and_fix(tmp_path, edit, message):
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60), ("b.jpg", 40, 60)], [
        ann(1, 1, 1, [1, 1, 10, 10]), ann(2, 2, 18, [5, 5, 10, 10])], CATEGORIES)
    data = json.loads(open(ann_file, encoding="utf-8").read())
    edit(data)
    with open(ann_file, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    with pytest.raises(AnnotationError) as caught:
        CocoDetection(ann_file, img_dir)
    assert str(caught.value) == f"{ann_file}: {message}"


def test_unreadable_image_is_skipped_or_fails(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60), ("b.jpg", 40, 60)],
                                      [ann(1, 2, 1, [1, 1, 10, 10])], CATEGORIES)
    (tmp_path / "img" / "a.jpg").write_bytes(b"garbage")
    transform = TrainTransform([32], 100)
    dataset = CocoDetection(ann_file, img_dir, transform)
    with pytest.warns(UserWarning, match="cannot decode image: .*a.jpg"):
        sample = dataset[(0, 1)]
    assert sample["file_name"] == "b.jpg" and sample["skipped"][0].endswith("a.jpg")
    strict = CocoDetection(ann_file, img_dir, transform, on_bad_image="fail")
    with pytest.raises(BadImageError, match="a.jpg.*data.on_bad_image=skip"):
        strict[(0, 1)]


def test_decoding_gray_rgba_16bit_and_exif(tmp_path):
    colour = np.zeros((20, 30, 3), np.uint8)
    colour[..., 0] = 200  # red in RGB
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([colour, np.full((20, 30), 9, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(tmp_path / "gray16.png")
    rotated = Image.fromarray(colour)
    exif = rotated.getexif()
    exif[274] = 6  # rotate 90 degrees when displayed
    rotated.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(str(tmp_path / "rgb.png"))[0, 0].tolist() == [200, 0, 0]
    rgba = read_image(str(tmp_path / "rgba.png"))
    assert rgba.shape == (20, 30, 3) and (rgba == colour).all()  # the alpha channel dropped
    assert read_image(str(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]
    assert read_image(str(tmp_path / "gray16.png"))[0, 0].tolist() == [40000 >> 8] * 3
    # Annotated data: the stored pixels, the orientation ignored; photos: upright as a viewer shows them.
    stored = read_image(str(tmp_path / "rotated.jpg"))
    assert stored.shape == (20, 30, 3)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rotated.jpg"), apply_exif_orientation=True),
                                  np.rot90(stored, k=-1))  # orientation 6: turned 90 degrees clockwise


def test_train_transform_resizes_flips_and_is_seeded():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 20, 50, 60]], np.float32)
    transform = TrainTransform([50], 1000, flip_prob=1.0)
    out_image, out_boxes, kept = transform(image, boxes, seed=3)
    assert out_image.shape == (50, 100, 3)
    assert np.allclose(out_boxes, [[100 - 25, 10, 100 - 5, 30]], atol=1e-4)
    assert kept.tolist() == [0]
    capped = TrainTransform([800], 300, flip_prob=0.0)(image, boxes, seed=0)[0]
    assert capped.shape == (150, 300, 3)
    random_sizes = TrainTransform([40, 60, 80], 1000)
    first = [random_sizes(image, boxes, seed=s)[0].shape for s in range(6)]
    assert first == [random_sizes(image, boxes, seed=s)[0].shape for s in range(6)]
    assert len(set(first)) > 1
    assert EvalTransform(50, 1000)(image).shape == (50, 100, 3)


def test_resized_pixels_are_bilinear_as_opencv_computes_them():
    """A 0.6 scale (where bilinear and area interpolation differ): the training transform's pixels
    are OpenCV's bilinear resize, mirrored, and its boxes scaled and mirrored by hand; the test
    transform's pixels the same resize."""
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 50, 60]], np.float32)
    resized = cv2.resize(image, (120, 60), interpolation=cv2.INTER_LINEAR)
    out_image, out_boxes, _ = TrainTransform([60], 1000, flip_prob=1.0)(image, boxes, seed=0)
    np.testing.assert_array_equal(out_image, resized[:, ::-1])
    np.testing.assert_allclose(out_boxes, [[120 - 50 * 0.6, 20 * 0.6, 120 - 10 * 0.6, 60 * 0.6]], atol=1e-4)
    np.testing.assert_array_equal(EvalTransform(60, 1000)(image), resized)
    assert EvalTransform(100, 1000)(image) is image  # already at the test scale: not resampled


def test_grouped_sampler_groups_shards_and_resumes():
    ratios = [1.5] * 10 + [0.7] * 6
    full = GroupedBatchSampler(ratios, 2, seed=5)
    stream = iter(full)
    first = [next(stream) for _ in range(20)]
    for batch in first:
        indices = [i for i, _ in batch]
        groups = {ratios[i] >= 1 for i in indices}
        assert len(indices) == 2 and len(groups) == 1
    resumed = iter(GroupedBatchSampler(ratios, 2, seed=5, start_step=13))
    assert [next(resumed) for _ in range(7)] == first[13:]
    # Two processes with one image each see the halves of the same global batches of two.
    rank0 = iter(GroupedBatchSampler(ratios, 1, seed=5, rank=0, world_size=2))
    rank1 = iter(GroupedBatchSampler(ratios, 1, seed=5, rank=1, world_size=2))
    pairs = [next(rank0) + next(rank1) for _ in range(20)]
    assert pairs == first


def test_samples_carry_boxes_in_network_coordinates(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 80)], [ann(1, 1, 18, [10, 10, 20, 10]),
                                                                     ann(2, 1, 1, [0, 0, 5, 5], crowd=1)], CATEGORIES)
    dataset = CocoDetection(ann_file, img_dir, TrainTransform([80], 1000, flip_prob=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = dataset[(0, 0)]
    assert sample["image"].shape == (3, 80, 160) and sample["image"].dtype == torch.uint8
    assert torch.allclose(sample["boxes"], torch.tensor([[20.0, 20.0, 60.0, 40.0]]))
    assert sample["labels"].tolist() == [2]
    assert torch.allclose(sample["crowd_boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert (sample["height"], sample["width"]) == (40, 80)


def test_a_json_without_image_sizes_has_boxes_outside_the_file_left_out_with_a_warning(tmp_path):
    """Without width and height the boxes cannot be checked when the json is read: one beyond the file's
    edge is clipped to nothing when the image is, and is left out with its label, naming the file."""
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 80)], [
        ann(1, 1, 18, [10, 10, 20, 10]), ann(2, 1, 1, [80, 5, 10, 10]), ann(3, 1, 90, [30, 40, 5, 5], crowd=1)],
        CATEGORIES)
    data = json.loads(open(ann_file).read())
    for image in data["images"]:
        del image["width"], image["height"]
    open(ann_file, "w").write(json.dumps(data))
    dataset = CocoDetection(ann_file, img_dir, TrainTransform([40], 1000, flip_prob=0.0))
    with pytest.warns(UserWarning, match=r"a.jpg: 2 box\(es\) of .*ann.json lie outside the 80x40 image and are "
                                         r"left out \(give each image's width and height in the json"):
        sample = dataset[(0, 0)]
    assert sample["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]] and sample["labels"].tolist() == [2]
    assert sample["crowd_boxes"].shape == (0, 4)


def test_a_test_json_without_areas_says_the_size_split_uses_box_areas(tmp_path):
    annotations = [ann(1, 1, 1, [1, 1, 10, 10]), ann(2, 1, 18, [5, 5, 10, 10])]
    del annotations[1]["area"]
    ann_file, img_dir = write_dataset(tmp_path, [("a.jpg", 40, 60)], annotations, CATEGORIES)
    with pytest.warns(UserWarning, match=r"ann.json: 1 of 2 annotations have no 'area': .*\(APs, APm, APl\) uses "
                                         r"their box area"):
        CocoDetection(ann_file, img_dir, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # training never splits by area
        CocoDetection(ann_file, img_dir, train=True)


def test_a_folder_that_holds_none_of_the_images_is_one_error(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path, [(f"{i}.jpg", 20, 30) for i in range(50)],
                                      [ann(1, 1, 1, [1, 1, 10, 10])], CATEGORIES)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError) as error:
        CocoDetection(ann_file, str(tmp_path / "elsewhere"), key_prefix="data.test", train=False)
    assert str(error.value) == (f"none of 20 images of {ann_file} spread over the set is in {tmp_path / 'elsewhere'} "
                                f"(e.g. {tmp_path / 'elsewhere' / '0.jpg'}): set data.test.img_dir to the folder "
                                f"their file_name is relative to")
    for index in range(50):  # one image of the twenty sampled (every other one) left: the folder is right
        if index != 10:
            (tmp_path / "img" / f"{index}.jpg").unlink()
    assert len(CocoDetection(ann_file, img_dir, train=False)) == 50
