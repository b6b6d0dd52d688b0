"""FlatRecords: records packed into flat numpy arrays come back with the same fields, values and types,
and the container holds a fixed number of Python objects whatever the number of records."""

import dataclasses
import gc

import numpy as np
import pytest

from resnet_engine.flat_records import FlatRecords


def coco_like(count: int, rng: np.random.Generator) -> list[dict]:
    """Records with 0 to 40 boxes, unicode and empty file names, int ids and float sizes."""
    names = ["a.jpg", "çà/图像 1.png", "", "x" * 300, "ünï/ço dé.JPEG"]
    records = []
    for index in range(count):
        boxes = rng.uniform(0, 100, (int(rng.integers(0, 41)) if index % 3 else 0, 4)).astype(np.float32)
        records.append({"image_id": int(rng.integers(0, 2**40)), "file_name": names[index % len(names)],
                        "width": float(rng.integers(1, 1000)), "height": float(rng.uniform(1, 1000)),
                        "boxes": boxes, "labels": rng.integers(1, 91, len(boxes)).astype(np.int64),
                        "crowd_boxes": np.zeros((index % 2, 4), np.float32), "flipped": bool(index % 2)})
    return records


def assert_same(got, want):
    assert type(got) is type(want)
    got_fields, want_fields = (r if isinstance(r, dict) else dataclasses.asdict(r) for r in (got, want))
    assert list(got_fields) == list(want_fields)
    for name, value in want_fields.items():
        assert type(got_fields[name]) is type(value), name
        if isinstance(value, np.ndarray):
            assert got_fields[name].dtype == value.dtype and got_fields[name].shape == value.shape, name
            np.testing.assert_array_equal(got_fields[name], value)
        else:
            assert got_fields[name] == value, name


def test_dict_records_round_trip_with_no_many_and_unicode_fields():
    records = coco_like(50, np.random.default_rng(0))
    flat = FlatRecords(records)
    assert len(flat) == 50
    assert max(len(r["boxes"]) for r in records) > 20 and min(len(r["boxes"]) for r in records) == 0
    for got, want in zip(flat, records, strict=True):
        assert_same(got, want)
    assert_same(flat[-1], records[-1])
    for got, want in zip(flat[3:40:7], records[3:40:7], strict=True):
        assert_same(got, want)
    np.testing.assert_array_equal(flat.column("width"), [r["width"] for r in records])
    with pytest.raises(IndexError):
        flat[50]


@dataclasses.dataclass(frozen=True)
class Boxed:
    image_id: str
    path: str
    label: int
    boxes: tuple


def test_dataclass_records_with_tuples_of_boxes_round_trip():
    records = [Boxed("n01_1", "/data/n01/n01_1.JPEG", 0, ((1.5, 2.0, 30.25, 40.0),)),
               Boxed("n02_ü", "/data/n02/n02_ü.JPEG", 999, ((0.0, 0.0, 1.0, 1.0), (3.0, 4.0, 5.0, 6.125))),
               Boxed("n03_3", "/data/n03/n03_3.JPEG", 7, ())]
    flat = FlatRecords(records)
    assert list(flat) == records
    assert type(flat[1].boxes[1][3]) is float and type(flat[1].label) is int


def test_the_stored_arrays_are_read_only_and_what_comes_back_is_a_copy():
    records = coco_like(4, np.random.default_rng(1))
    flat = FlatRecords(records)
    boxes = flat[1]["boxes"]
    boxes[:] = -1
    np.testing.assert_array_equal(flat[1]["boxes"], records[1]["boxes"])
    assert (records[1]["boxes"] >= 0).all() and len(boxes)
    with pytest.raises(ValueError):
        flat.column("width")[0] = 3


def objects_reachable(root) -> int:
    """The number of Python objects reachable from ``root``, numpy arrays counted as one."""
    seen, stack = set(), [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (type, type(gc))):
            continue
        seen.add(id(item))
        if not isinstance(item, np.ndarray):
            stack.extend(gc.get_referents(item))
    return len(seen)


def test_the_container_holds_no_python_object_per_record():
    small, large = (FlatRecords(coco_like(count, np.random.default_rng(2))) for count in (10, 2000))
    assert objects_reachable(small) == objects_reachable(large)
    for array in (*large.columns.values(), *large.offsets.values()):
        assert isinstance(array, np.ndarray) and array.dtype != object and array.base is None
    # A list of the same records reaches thousands of objects: the count above would catch one.
    assert objects_reachable(list(large)) > 10 * objects_reachable(large)


def test_arrays_of_another_trailing_shape_are_refused():
    with pytest.raises(ValueError, match="boxes"):
        FlatRecords([{"boxes": np.zeros((1, 4), np.float32)}, {"boxes": np.zeros((1, 5), np.float32)}])


def test_records_given_column_by_column_equal_those_packed_one_by_one():
    records = coco_like(30, np.random.default_rng(4))
    boxes = [record["boxes"] for record in records]
    offsets = np.cumsum([0] + [len(b) for b in boxes])
    columns = {name: [record[name] for record in records] for name in records[0]}
    columns["boxes"] = (np.concatenate(boxes), offsets)
    for got, want in zip(FlatRecords.from_columns(30, columns), records, strict=True):
        assert_same(got, want)
    with pytest.raises(ValueError, match="'boxes'"):
        FlatRecords.from_columns(30, {**columns, "boxes": (np.concatenate(boxes), offsets[:-1])})


def test_garbage_collection_is_paused_inside_and_restored_after_even_on_error():
    from resnet_engine.flat_records import garbage_collection_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), garbage_collection_paused():
        assert not gc.isenabled()
        raise RuntimeError("a parse that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        with garbage_collection_paused():
            pass
        assert not gc.isenabled()  # a caller's own pause is not ended by ours
    finally:
        gc.enable()
