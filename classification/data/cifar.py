"""The files of the official CIFAR-10 and CIFAR-100 distributions, read and written by path.

Four layouts, as the archives extract (https://www.cs.toronto.edu/~kriz/cifar.html):

    cifar-10-batches-bin/  data_batch_1.bin .. data_batch_5.bin, test_batch.bin, batches.meta.txt
    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-binary/      train.bin, test.bin, fine_label_names.txt, coarse_label_names.txt
    cifar-100-python/      train, test, meta

A binary record is the label byte (CIFAR-100: the coarse, then the fine label byte) followed by 3072
pixel bytes: the 1024 red values of the 32x32 image in row-major order, then the green, then the blue.
A python batch is a pickled dict (written by Python 2) with b"data" (uint8, one such 3072-byte row
per image), b"labels" (CIFAR-100: b"fine_labels" and b"coarse_labels"), b"filenames" and
b"batch_label". Unpickling can run code, so those files are read by an unpickler that admits only
numpy's array reconstruction and refuses every other global.

Images are kept as they are stored, one uint8 array of shape (N, 3, 32, 32): no per-image objects,
so data-loading workers share the array without copying it.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from resnet_engine.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
REDOWNLOAD = "download and extract the archive again"
# Every official layout holds 50,000 training and 10,000 test images: a file cut at a record boundary
# reads as a smaller, valid set, and only the count tells.
OFFICIAL_COUNTS = {"train": 50_000, "test": 10_000}
# The settings file of a set the toolkit generated (classification/data/synthetic_cifar.py): such a set
# has its own sizes.
SYNTHETIC_MARKER = "synthetic.json"


class CifarError(UserError):
    """A CIFAR file or folder that cannot be read as one of the official layouts."""


@dataclass(frozen=True)
class Layout:
    """One of the official CIFAR folders: its name, version, class count and files."""

    folder: str
    version: str  # "binary" or "python"
    num_classes: int  # 10 or 100 (CIFAR-100 records also hold one of 20 coarse labels)
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_files: tuple[str, ...]  # the class names: fine (or only) names first

    @property
    def name(self) -> str:
        return f"CIFAR-{self.num_classes}"

    @property
    def has_coarse_labels(self) -> bool:
        return self.num_classes == 100


NUM_COARSE_CLASSES = 20
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
LAYOUTS = (
    Layout("cifar-10-batches-bin", "binary", 10, tuple(f"{b}.bin" for b in CIFAR10_BATCHES), ("test_batch.bin",),
           ("batches.meta.txt",)),
    Layout("cifar-10-batches-py", "python", 10, CIFAR10_BATCHES, ("test_batch",), ("batches.meta",)),
    Layout("cifar-100-binary", "binary", 100, ("train.bin",), ("test.bin",),
           ("fine_label_names.txt", "coarse_label_names.txt")),
    Layout("cifar-100-python", "python", 100, ("train",), ("test",), ("meta",)),
)


@dataclass
class CifarArrays:
    """Images (uint8, N x 3 x 32 x 32), labels (int64, N) and, for CIFAR-100, the coarse labels."""

    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class CifarSource:
    """A CIFAR folder on disk and its layout."""

    layout: Layout
    folder: str

    def describe(self) -> str:
        return f"{self.layout.name} ({self.layout.version} version) from {self.folder}"

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    @property
    def generated(self) -> bool:
        """Whether the toolkit generated this folder (its settings file): a synthetic set of its own sizes."""
        return os.path.isfile(self.path(SYNTHETIC_MARKER))


# --------------------------------------------------------------------------------------------- layouts


def _looks_like(folder: str, layout: Layout) -> bool:
    """A folder is of a layout when it bears the layout's name or holds its first training file."""
    return (os.path.basename(os.path.normpath(folder)) == layout.folder
            or os.path.isfile(os.path.join(folder, layout.train_files[0])))


def find_cifar(root: str, num_classes: int | None = None) -> CifarSource:
    """The CIFAR folder in ``root`` (or ``root`` itself), of ``num_classes`` classes if given.

    When ``root`` holds both versions of one dataset the binary one is read (no unpickling).
    """
    if not os.path.isdir(root):
        raise CifarError(f"CIFAR folder not found: {root} (set data.root to the folder holding "
                         f"cifar-10-batches-bin, or to that folder itself)")
    wanted = [layout for layout in LAYOUTS if num_classes in (None, layout.num_classes)]
    found = [CifarSource(layout, root) for layout in wanted if _looks_like(root, layout)]
    if not found:
        found = [CifarSource(layout, os.path.join(root, layout.folder)) for layout in wanted
                 if os.path.isdir(os.path.join(root, layout.folder))]
    if not found:
        expected = ", ".join(layout.folder for layout in wanted)
        other = [layout for layout in LAYOUTS if layout not in wanted and (
            _looks_like(root, layout) or os.path.isdir(os.path.join(root, layout.folder)))]
        if other:
            dataset = other[0].name
            raise CifarError(f"{root} holds {dataset} ({other[0].folder}), not {expected}: set data.dataset="
                             f"{dataset.lower().replace('-', '')} (and a {dataset.lower().replace('-', '')}_* config)")
        raise CifarError(f"{root} holds no CIFAR folder ({expected}): set data.root to the folder where the "
                         f"official archive was extracted")
    datasets = sorted({source.layout.name for source in found})
    if len(datasets) > 1:
        raise CifarError(f"{root} holds both {' and '.join(datasets)}: set data.root to "
                         f"{found[0].folder} or the other folder")
    source = found[0]  # LAYOUTS lists the binary version first
    logger.info("reading %s", source.describe())
    return source


def read_split(source: CifarSource, part: str) -> CifarArrays:
    """All images of the training files (``part="train"``) or of the test file (``"test"``).

    Every file is checked to exist before any is read, and each is checked whole before the next.
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', not {part!r}")
    layout = source.layout
    paths = [source.path(name) for name in (layout.train_files if part == "train" else layout.test_files)]
    for path in paths:
        if not os.path.isfile(path):
            raise CifarError(f"CIFAR file not found: {path} ({source.folder} is incomplete: {REDOWNLOAD})")
    reader = read_binary_batch if layout.version == "binary" else read_python_batch
    batches: list[CifarArrays] = []
    for path in paths:
        batch = reader(path, layout.num_classes)
        if batches and len(batch) != len(batches[0]):
            raise CifarError(f"{path} holds {len(batch)} images and {paths[0]} {len(batches[0])}: one of them "
                             f"is truncated ({REDOWNLOAD})")
        batches.append(batch)
    if len(batches) == 1:
        arrays = batches[0]
    else:
        coarse = (np.concatenate([b.coarse_labels for b in batches]) if layout.has_coarse_labels else None)
        arrays = CifarArrays(np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]),
                             coarse)
    warn_if_not_official_size(source, part, len(arrays))
    return arrays


def warn_if_not_official_size(source: CifarSource, part: str, count: int) -> None:
    """A warning when a split of an official folder holds another number of images than the archive's."""
    official = OFFICIAL_COUNTS[part]
    if count == official or source.generated:
        return
    files = " and ".join(source.layout.train_files if part == "train" else source.layout.test_files)
    warnings.warn(f"{source.folder}: the {part} files ({files}) hold {count} images, the official "
                  f"{source.layout.name} {official}: a file is cut short or not the official one, and "
                  f"errors are not comparable with the paper's ({REDOWNLOAD})", stacklevel=2)


def _check_labels(path: str, labels: np.ndarray, num_classes: int, dataset: str, what: str = "label") -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        index = int(bad[0])
        raise CifarError(f"{path}: record {index} (counting from 0) has {what} {int(labels[index])}, outside "
                         f"{dataset}'s {num_classes} classes (0 to {num_classes - 1}): the file is damaged or "
                         f"not a {dataset} batch ({REDOWNLOAD})")


# --------------------------------------------------------------------------------------------- binary version


def read_binary_batch(path: str, num_classes: int = 10) -> CifarArrays:
    """One binary file: records of 1 label byte (CIFAR-100: coarse and fine) and 3072 pixel bytes."""
    dataset = f"CIFAR-{num_classes}"
    label_bytes = 2 if num_classes == 100 else 1
    record = label_bytes + PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise CifarError(f"CIFAR file not found: {path} ({REDOWNLOAD})") from None
    except OSError as error:
        raise CifarError(f"cannot read {path}: {error.strerror or error}") from None
    if raw.size == 0 or raw.size % record:
        raise CifarError(f"{path}: {raw.size} bytes are not a whole number of {record}-byte records "
                         f"({label_bytes} label byte{'s' if label_bytes > 1 else ''} and {PIXELS} pixel bytes "
                         f"each): the file is truncated or not a {dataset} binary batch ({REDOWNLOAD})")
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    _check_labels(path, labels, num_classes, dataset)
    coarse = None
    if label_bytes == 2:
        coarse = rows[:, 0].astype(np.int64)
        _check_labels(path, coarse, NUM_COARSE_CLASSES, dataset, what="coarse label")
    images = np.ascontiguousarray(rows[:, label_bytes:]).reshape(-1, *IMAGE_SHAPE)
    return CifarArrays(images, labels, coarse)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 of shape (N, 3, 32, 32) (channels first, as CIFAR stores "
                         f"them); got {images.dtype} {images.shape}")
    return images


def _write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a file of this process, renamed at the end: a reader (or a
    second writer of the same file) never sees it half written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.tmp.{os.getpid()}"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def write_binary_batch(path: str, images: np.ndarray, labels: Sequence[int],
                       coarse_labels: Sequence[int] | None = None) -> None:
    """Write records in the binary format; with ``coarse_labels``, CIFAR-100's two label bytes."""
    images = _check_images(images)
    label_columns = [np.asarray(labels)] if coarse_labels is None else [np.asarray(coarse_labels),
                                                                        np.asarray(labels)]
    records = np.concatenate([np.stack(label_columns, axis=1).astype(np.uint8),
                              images.reshape(len(images), PIXELS)], axis=1)
    _write_atomically(path, records.tobytes())


# --------------------------------------------------------------------------------------------- python version

# What the official pickles name: numpy's array reconstruction (module numpy.core before numpy 2.0,
# numpy._core after), the array type and the dtype. Everything else in them is dicts, lists, bytes, ints.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays besides the plain types: no pickled function runs."""

    def __init__(self, handle, path: str):
        # The official files were written by Python 2: its byte strings load as bytes, not as text.
        super().__init__(handle, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise CifarError(f"{self.path} was refused as unsafe: it names {module}.{name}, and a CIFAR python "
                             f"batch holds nothing but numpy arrays, lists, bytes and numbers (loading it could "
                             f"run code): use the official file, or the binary version of the dataset")
        return super().find_class(module, name)


def load_cifar_pickle(path: str):
    """Unpickle a CIFAR python file with :class:`CifarUnpickler`."""
    try:
        with open(path, "rb") as handle:
            return CifarUnpickler(handle, path).load()
    except FileNotFoundError:
        raise CifarError(f"CIFAR file not found: {path} ({REDOWNLOAD})") from None
    except CifarError:
        raise
    except Exception as error:  # any failure to decode an untrusted file means the file is bad
        raise CifarError(f"{path} cannot be read as a CIFAR python batch ({type(error).__name__}: {error}): the "
                         f"file is truncated or damaged ({REDOWNLOAD})") from None


def _text_keys(path: str, content) -> dict:
    if not isinstance(content, dict):
        raise CifarError(f"{path} holds a {type(content).__name__}, not the dict of a CIFAR python file")
    return {key.decode("latin-1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _entry(path: str, entries: dict, key: str, dataset: str):
    if key not in entries:
        held = ", ".join(sorted(repr(k) for k in entries)) or "nothing"
        raise CifarError(f"{path} has no '{key}' entry (it holds {held}): it is not a {dataset} python batch")
    return entries[key]


def _label_array(path: str, key: str, value, count: int, num_classes: int, dataset: str) -> np.ndarray:
    labels = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    # An empty list is left to the count check below, which names the problem better.
    if labels is None or labels.ndim != 1 or (labels.dtype.kind not in "iu" and labels.size > 0):
        raise CifarError(f"{path}: '{key}' must be a list of integer labels, not {_describe(value)}")
    if len(labels) != count:
        raise CifarError(f"{path} holds {len(labels)} '{key}' for {count} images: the file is damaged ({REDOWNLOAD})")
    labels = labels.astype(np.int64)
    _check_labels(path, labels, num_classes, dataset, what=key.rstrip("s").replace("_", " "))
    return labels


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def read_python_batch(path: str, num_classes: int = 10) -> CifarArrays:
    """One python batch: a pickled dict of b"data" (uint8 N x 3072) and its labels."""
    dataset = f"CIFAR-{num_classes}"
    entries = _text_keys(path, load_cifar_pickle(path))
    data = _entry(path, entries, "data", dataset)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS
            and len(data)):
        raise CifarError(f"{path}: 'data' is {_describe(data)}; a {dataset} python batch holds uint8 rows of "
                         f"{PIXELS} pixels, one per image")
    count = len(data)
    images = np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE)
    if num_classes != 100:
        labels = _label_array(path, "labels", _entry(path, entries, "labels", dataset), count, num_classes, dataset)
        return CifarArrays(images, labels)
    fine = _label_array(path, "fine_labels", _entry(path, entries, "fine_labels", dataset), count, 100, dataset)
    coarse = _label_array(path, "coarse_labels", _entry(path, entries, "coarse_labels", dataset), count,
                          NUM_COARSE_CLASSES, dataset)
    return CifarArrays(images, fine, coarse)


def write_python_batch(path: str, images: np.ndarray, labels: Sequence[int],
                       coarse_labels: Sequence[int] | None = None, filenames: Sequence[str] | None = None,
                       batch_label: str = "") -> None:
    """Write a python batch with the official keys (CIFAR-100's with ``coarse_labels``).

    Pickle protocol 3 keeps bytes as bytes (protocol 2 in Python 3 would name codecs.encode, which the
    reader refuses); the arrays name only the globals the reader admits.
    """
    images = _check_images(images)
    names = filenames if filenames is not None else [f"image_{i:06d}.png" for i in range(len(images))]
    content = {b"batch_label": batch_label.encode(), b"data": images.reshape(len(images), PIXELS).copy(),
               b"filenames": [name.encode() for name in names]}
    if coarse_labels is None:
        content[b"labels"] = [int(v) for v in labels]
    else:
        content[b"fine_labels"] = [int(v) for v in labels]
        content[b"coarse_labels"] = [int(v) for v in coarse_labels]
    _write_atomically(path, pickle.dumps(content, protocol=3))


# --------------------------------------------------------------------------------------------- class names


def _read_name_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise CifarError(f"{path} is not UTF-8 text: the file is damaged ({REDOWNLOAD})") from None


def _python_meta_names(path: str, key: str) -> list[str]:
    names = _entry(path, _text_keys(path, load_cifar_pickle(path)), key, "CIFAR")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise CifarError(f"{path}: '{key}' must be a list of names, not {_describe(names)}")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise CifarError(f"{path}: a name of '{key}' is not UTF-8 text: the file is damaged ({REDOWNLOAD})") from None


def read_class_names(source: CifarSource, coarse: bool = False) -> list[str]:
    """The class names of the meta file (CIFAR-100: the fine ones, or the coarse ones if ``coarse``).

    A missing meta file is not fatal (the images and labels do not need it): the classes are then
    named by their numbers, with a warning.
    """
    layout = source.layout
    if coarse and not layout.has_coarse_labels:
        raise ValueError(f"{layout.name} has no coarse labels")
    count = NUM_COARSE_CLASSES if coarse else layout.num_classes
    if layout.version == "binary":
        path = source.path(layout.meta_files[1 if coarse else 0])
        key = None
    else:
        path = source.path(layout.meta_files[0])
        key = "label_names" if layout.num_classes == 10 else ("coarse_label_names" if coarse else "fine_label_names")
    if not os.path.isfile(path):
        warnings.warn(f"{path} not found: the classes are named by their numbers", stacklevel=2)
        return [str(i) for i in range(count)]
    names = _read_name_lines(path) if key is None else _python_meta_names(path, key)
    if len(names) != count:
        raise CifarError(f"{path} names {len(names)} classes and {layout.name} has {count}: the file is damaged "
                         f"or of another dataset ({REDOWNLOAD})")
    return names


def write_class_names(folder: str, layout: Layout, names: Sequence[str],
                      coarse_names: Sequence[str] | None = None) -> None:
    """Write the meta file(s) of ``layout`` into ``folder``."""
    if layout.version == "binary":
        _write_atomically(os.path.join(folder, layout.meta_files[0]), ("\n".join(names) + "\n").encode())
        if coarse_names is not None:
            _write_atomically(os.path.join(folder, layout.meta_files[1]), ("\n".join(coarse_names) + "\n").encode())
        return
    if layout.num_classes == 10:
        content = {b"label_names": [n.encode() for n in names], b"num_vis": PIXELS}
    else:
        content = {b"fine_label_names": [n.encode() for n in names],
                   b"coarse_label_names": [n.encode() for n in coarse_names or ()]}
    _write_atomically(os.path.join(folder, layout.meta_files[0]), pickle.dumps(content, protocol=3))
