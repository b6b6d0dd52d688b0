"""Reading a COCO json fast: orjson with the standard library for what orjson refuses, and the quick tests
that leave only the doubtful entries to the full check."""

from __future__ import annotations

import json
import math

import pytest

from detection.data.coco import (
    AnnotationError,
    entry_problem,
    load_coco,
    plain_annotation,
    plain_image,
    read_json,
)

GOOD = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2.5, 3, 4]}
MALFORMED = [
    "not an object", None, [1, 2, 3, 4],
    {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},          # no id
    {"id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},                # no image_id
    {"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4]},                   # no category_id
    {"id": 1, "image_id": 1, "category_id": 1},                       # no bbox
    {**GOOD, "bbox": [1, 2, 3]}, {**GOOD, "bbox": [1, 2, 3, 4, 5]},
    {**GOOD, "bbox": "1 2 3 4"}, {**GOOD, "bbox": None}, {**GOOD, "bbox": (1, 2, 3, 4)},
    {**GOOD, "bbox": [1, "2", 3, 4]}, {**GOOD, "bbox": [True, 2, 3, 4]}, {**GOOD, "bbox": [1, 2, None, 4]},
]


MALFORMED_IMAGES = ["x", None, {"file_name": "a.jpg"}, {"id": 1}, {"id": 1, "file_name": "a.jpg", "width": "640"},
                    {"id": 1, "file_name": "a.jpg", "height": None}, {"id": 1, "file_name": "a.jpg", "width": True}]


@pytest.mark.parametrize("bad", MALFORMED, ids=range(len(MALFORMED)))
def test_no_annotation_the_full_check_refuses_passes_the_quick_test(bad):
    assert entry_problem("annotations", bad) is not None  # the case is malformed
    assert not plain_annotation(bad)


@pytest.mark.parametrize("bad", MALFORMED_IMAGES, ids=range(len(MALFORMED_IMAGES)))
def test_no_image_the_full_check_refuses_passes_the_quick_test(bad):
    assert entry_problem("images", bad) is not None
    assert not plain_image(bad)


def test_the_quick_tests_pass_plain_entries_and_the_file_names_the_first_bad_one(tmp_path):
    assert all(plain_annotation(dict(GOOD, id=k, bbox=[k, 0.5, 2, 3.25])) for k in range(5))
    assert plain_annotation(dict(GOOD, bbox=[1, 2, float("nan"), 4]))  # dropped later, with the degenerate boxes
    assert plain_image({"id": 1, "file_name": "a.jpg", "width": 640, "height": 480.0})
    assert plain_image({"id": 1, "file_name": "a.jpg"})  # no size: read from the image
    content = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1}],
               "annotations": [dict(GOOD, id=k) for k in range(3)] + [dict(GOOD, id=9, bbox=[1, 2, 3])]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=r"a.json: annotation #3 \(id 9\) has bbox \[1, 2, 3\]"):
        load_coco(str(path))


def test_a_file_orjson_refuses_is_read_by_the_standard_library(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"images": [], "annotations": [{"bbox": [NaN, Infinity, 1, 18446744073709551616]}]}')
    data = read_json(str(path))
    x, y, _, big = data["annotations"][0]["bbox"]
    assert math.isnan(x) and y == math.inf and big == 2**64


def test_read_json_equals_the_standard_library(tmp_path):
    content = {"images": [{"id": 7, "file_name": "é/ü.jpg", "width": 640, "height": 480}],
               "annotations": [{"id": 1, "bbox": [0.1, 1e-7, 3.000000000000001, 2.5e300]}], "categories": []}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    assert read_json(str(path)) == json.loads(path.read_text(encoding="utf-8"))


def test_invalid_json_names_the_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n  "categories": [}\n')
    with pytest.raises(AnnotationError, match=r"broken.json: invalid JSON at line 2 column 18"):
        load_coco(str(path))
