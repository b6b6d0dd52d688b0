"""Per-image dataset records stored in a few flat numpy arrays, which forked data-loader workers share.

A training set held as a Python list of records (dicts or dataclasses with their strings, numbers and
small arrays) is millions of Python objects at COCO or ImageNet size. A forked worker starts sharing the
parent's memory page by page, but every access to such an object writes its reference count and every
full garbage collection writes its header, so each worker ends up with a private copy of every page
that holds one: gigabytes per worker, times the workers of every process. Numpy arrays of a fixed dtype
are a handful of objects whatever their length, and reading them writes nothing, so their pages stay
shared. FlatRecords packs the records into such arrays once and builds each record back on access, with
the same fields, values and types.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator, Sequence

import numpy as np

SCALAR, TEXT, ARRAY, ROWS = "scalar", "text", "array", "rows"


@contextlib.contextmanager
def garbage_collection_paused():
    """Pause Python's cyclic garbage collector while a parse or a build creates millions of objects that
    all stay alive (a COCO json, an annotation listing). Each collection would walk every container made
    so far and find nothing to free: parsing COCO train2017-sized json took 3.2-3.7 s with it and 1.2-1.3 s
    without. The collector's previous state is restored, also when the block raises."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclasses.dataclass(frozen=True)
class Field:
    """How one field is stored: a number per record (SCALAR), a str (TEXT: UTF-8 bytes), a numpy array
    (ARRAY: concatenated along its first axis) or a tuple of equal-length tuples of floats (ROWS: a
    float64 matrix)."""

    name: str
    kind: str


def kind_of(value) -> str:
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return SCALAR
    if isinstance(value, str):
        return TEXT
    if isinstance(value, np.ndarray):
        return ARRAY
    if isinstance(value, tuple) and all(isinstance(row, tuple) for row in value):
        return ROWS
    raise TypeError(f"a record field of type {type(value).__name__} cannot be stored flat")


def fields_of(record) -> dict:
    """{name: value} of a dict or a dataclass record, in field order."""
    if isinstance(record, dict):
        return record
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def scalar_column(values: list) -> np.ndarray:
    """bool, int and float columns keep their Python type on the way back (numpy's .item())."""
    types = set(map(type, values))  # one pass in C: a million records are common
    if all(issubclass(kind, (bool, np.bool_)) for kind in types):
        return np.array(values, dtype=bool)
    if all(issubclass(kind, (int, np.integer)) and not issubclass(kind, bool) for kind in types):
        return np.array(values, dtype=np.int64)
    return np.array(values, dtype=np.float64)


def offsets_of(lengths: Sequence[int]) -> np.ndarray:
    """Part i of a concatenation of parts of these lengths is rows offsets[i]:offsets[i + 1]."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(lengths, dtype=np.int64, count=len(lengths)), out=offsets[1:])
    return offsets


def text_column(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(the UTF-8 bytes of every str, one after the other, offsets)."""
    encoded = [value.encode("utf-8") for value in values]
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets_of(list(map(len, encoded)))


def ragged_column(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the arrays concatenated along axis 0, offsets)."""
    return np.concatenate(parts), offsets_of([len(part) for part in parts])


def array_parts(name: str, values: list[np.ndarray]) -> list[np.ndarray]:
    """The arrays of one field, checked to share a dtype and the shape after the first axis."""
    first = values[0]
    for value in values:
        if value.dtype != first.dtype or value.shape[1:] != first.shape[1:] or value.ndim == 0:
            raise ValueError(f"record field '{name}' mixes arrays of dtype/shape {first.dtype}{first.shape} and "
                             f"{value.dtype}{value.shape}: they must differ only in their first axis")
    return values


def rows_parts(values: list[tuple]) -> list[np.ndarray]:
    width = next((len(value[0]) for value in values if value), 0)
    return [np.array(value, dtype=np.float64).reshape(len(value), width) for value in values]


def check_ragged(name: str, length: int, data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.asarray(offsets, dtype=np.int64)
    if (len(offsets) != length + 1 or offsets[0] != 0 or offsets[-1] != len(data)
            or np.any(np.diff(offsets) < 0) or data.dtype == object):
        raise ValueError(f"record field '{name}': {len(offsets)} offsets from {offsets[:1]} to {offsets[-1:]} do not "
                         f"split {len(data)} rows among {length} records")
    return np.ascontiguousarray(data), offsets


class FlatRecords(Sequence):
    """A read-only sequence of records (dicts, or dataclasses of one type) kept in flat numpy arrays.

    ``records[i]`` builds record i back: a new dict or dataclass whose numpy arrays are copies (the
    stored arrays are read-only and shared), strs and Python numbers as packed. ``records[a:b]`` is a
    FlatRecords of those records; ``column(name)`` is a number field of every record as one array."""

    def __init__(self, records: Sequence):
        records = list(records)
        record_type = type(records[0]) if records else dict
        names = list(fields_of(records[0])) if records else []
        if record_type is dict:
            columns = {name: [record[name] for record in records] for name in names}
        else:
            columns = {name: [getattr(record, name) for record in records] for name in names}
        self._fill(record_type, len(records), columns)

    @classmethod
    def from_columns(cls, length: int, columns: dict, record_type: type = dict) -> FlatRecords:
        """Records given field by field: a list of one value per record, or for an array field already
        concatenated, (the arrays one after the other, offsets: record i's is rows offsets[i]:offsets[i + 1])."""
        flat = cls.__new__(cls)
        flat._fill(record_type, length, columns)
        return flat

    def _fill(self, record_type: type, length: int, columns: dict) -> None:
        self.record_type, self.length = record_type, length
        self.fields: list[Field] = []
        self.columns: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        for name, values in columns.items():
            if isinstance(values, tuple):
                field = Field(name, ARRAY)
                self.columns[name], self.offsets[name] = check_ragged(name, length, *values)
            else:
                field = Field(name, kind_of(values[0]) if length else SCALAR)
                self._pack(field, values)
            self.fields.append(field)
        for array in (*self.columns.values(), *self.offsets.values()):
            array.flags.writeable = False

    def _pack(self, field: Field, values: list) -> None:
        if field.kind == SCALAR:
            self.columns[field.name] = scalar_column(values)
            return
        if field.kind == TEXT:
            self.columns[field.name], self.offsets[field.name] = text_column(values)
            return
        parts = array_parts(field.name, values) if field.kind == ARRAY else rows_parts(values)
        self.columns[field.name], self.offsets[field.name] = ragged_column(parts)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return FlatRecords([self[i] for i in range(*index.indices(self.length))])
        if not -self.length <= index < self.length:
            raise IndexError(f"record {index} of {self.length}")
        index = index % self.length
        values = {field.name: self._value(field, index) for field in self.fields}
        return values if self.record_type is dict else self.record_type(**values)

    def __iter__(self) -> Iterator:
        return (self[index] for index in range(self.length))

    def _value(self, field: Field, index: int):
        column = self.columns[field.name]
        if field.kind == SCALAR:
            return column[index].item()
        offsets = self.offsets[field.name]
        part = column[offsets[index]:offsets[index + 1]]
        if field.kind == TEXT:
            return part.tobytes().decode("utf-8")
        if field.kind == ARRAY:
            return part.copy()
        return tuple(tuple(row) for row in part.tolist())

    def column(self, name: str) -> np.ndarray:
        """The number field ``name`` of every record, in order (read-only)."""
        kinds = {field.name: field.kind for field in self.fields}
        if kinds.get(name) != SCALAR:
            raise KeyError(f"'{name}' is not a number field of these records ({', '.join(kinds)})")
        return self.columns[name]
