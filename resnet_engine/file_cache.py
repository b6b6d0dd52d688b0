"""A cache of parsed annotation files: parse once, reuse until the files change.

Reading ILSVRC's 544k CLS-LOC XML files, its solution CSVs or the listing of 1.28M training images
takes minutes at every start, on every rank. Readers hand their parse to :func:`cached`, which keeps
the result as one JSON file (no pickle: a cache file is only ever data) keyed by a fingerprint of the
files it came from, rebuilds it when the fingerprint changes or the file is unreadable, and writes it
atomically, so that a reader never sees half a file.

The cache lives in the ``annotations`` folder of the toolkit's cache (``$RESNET_DETECTION_CACHE``, else
``$XDG_CACHE_HOME/resnet-detection``, by default ``~/.cache/resnet-detection``, where the compiled
kernels also go), or in ``$RESNET_DETECTION_ANNOTATION_CACHE`` if set: outside the dataset, so that
read-only datasets are cached too. ``RESNET_DETECTION_ANNOTATION_CACHE=off`` turns it off; deleting
the folder clears it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .distributed import on_main_process

logger = logging.getLogger(__name__)

CACHE_ENV = "RESNET_DETECTION_ANNOTATION_CACHE"
# Bumped when the layout of a cached payload changes, so that old files are rebuilt, not misread.
FORMAT_VERSION = 2  # 2: ILSVRC annotations as flat columns


def cache_folder() -> str | None:
    """The folder of the cache files, or None when the cache is turned off."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen:
        return None if chosen.lower() in ("off", "0", "false", "no") else os.path.expanduser(chosen)
    root = os.environ.get("RESNET_DETECTION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "resnet-detection")
    return os.path.join(root, "annotations")


def cache_path(kind: str, source: str) -> str | None:
    """The cache file of ``source`` (a file or folder) for one kind of parse."""
    folder = cache_folder()
    if folder is None:
        return None
    digest = hashlib.sha256(os.path.abspath(source).encode()).hexdigest()[:16]
    return os.path.join(folder, f"{kind}-{digest}.json")


# --------------------------------------------------------------------------------------------- fingerprints
# A fingerprint is made of what one stat call per file gives (name, size, modification time), not of
# the contents: hashing 544k files would cost as much as parsing them. It misses an edit that keeps
# both the size and the modification time (a copy made with preserved times, or two edits within the
# file system's timestamp resolution); touching the file or deleting the cache rebuilds it then.


def file_fingerprint(path: str, *extra: str) -> str:
    """Name, size and modification time of one file, and ``extra`` (e.g. settings the parse depends on)."""
    stat = os.stat(path)
    return _digest([os.path.abspath(path), str(stat.st_size), str(stat.st_mtime_ns), *extra])


def tree_fingerprint(folder: str, suffix: str, *extra: str) -> str:
    """Relative path, size and modification time of every file under ``folder`` whose name ends in
    ``suffix`` (any case), from one os.scandir pass per folder, in sorted order."""
    return _digest([os.path.abspath(folder), *extra, *_tree_entries(folder, folder, suffix.lower())])


def _tree_entries(top: str, folder: str, suffix: str) -> Iterable[str]:
    with os.scandir(folder) as entries:
        ordered = sorted(entries, key=lambda entry: entry.name)
    for entry in ordered:
        if entry.is_dir():
            yield from _tree_entries(top, entry.path, suffix)
        elif entry.name.lower().endswith(suffix):
            stat = entry.stat()
            yield f"{os.path.relpath(entry.path, top)}\t{stat.st_size}\t{stat.st_mtime_ns}"


def folders_fingerprint(folders: Iterable[str], *extra: str) -> str:
    """Modification times of folders: enough for a listing of their files, since adding, removing or
    renaming an entry changes its folder's time, while edits inside a file (which a listing does not
    see) do not."""
    parts = [*extra]
    for folder in folders:
        parts.append(f"{os.path.abspath(folder)}\t{os.stat(folder).st_mtime_ns if os.path.isdir(folder) else -1}")
    return _digest(parts)


def _digest(parts: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape"))
        hasher.update(b"\n")
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------- the cache


def cached(kind: str, source: str, fingerprint: Callable[[], str], build: Callable[[], Any],
           encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> Any:
    """``build()``'s result for ``source``, from the cache when its fingerprint still matches.

    ``encode`` turns the result into JSON-able data, ``decode`` turns that back. In a distributed run
    the main process checks the fingerprint and builds the cache; the others wait for it, then read
    the file. A process that cannot read it (another machine, whose cache folder is its own) parses
    and writes the file itself, under the main process's key: the files are the same on every
    machine, as training on them assumes. In a group, every process must call
    it, as with any collective: a call on the main process alone would wait for the others forever.
    """
    path = cache_path(kind, source)
    if path is None:
        return build()
    built: dict[str, Any] = {}

    def refresh() -> str:
        key = fingerprint()
        found = read_cache(path, key, decode)
        built["value"] = found if found is not None else build_cache(path, key, build, encode)
        return key

    key = on_main_process(refresh)
    if "value" in built:
        return built["value"]
    found = read_cache(path, key, decode)
    return found if found is not None else build_cache(path, key, build, encode)


def read_cache(path: str, key: str, decode: Callable[[Any], Any]) -> Any | None:
    """The decoded payload, or None when the file is missing, stale or unreadable (with a warning)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        if document.get("fingerprint") != key or document.get("version") != FORMAT_VERSION:
            logger.info("%s: the files (or the cache format) changed since the cache was written; rebuilding it", path)
            return None
        return decode(document["payload"])
    except (FileNotFoundError, NotADirectoryError):  # not built yet, or no cache folder can exist there
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        warnings.warn(f"{path}: unreadable annotation cache ({type(error).__name__}: {error}); rebuilding it",
                      stacklevel=2)
        return None


def build_cache(path: str, key: str, build: Callable[[], Any], encode: Callable[[Any], Any]) -> Any:
    value = build()
    write_atomically(path, {"version": FORMAT_VERSION, "fingerprint": key, "payload": encode(value)})
    return value


def write_atomically(path: str, document: dict) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path``: readers see the old
    file or the new one, never a part. A folder that cannot be written only costs the reuse."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    except OSError as error:
        warnings.warn(f"cannot write the annotation cache in {folder} ({error.strerror}); set "
                      f"{CACHE_ENV} to a writable folder to parse the annotations once", stacklevel=3)
        return
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError as error:  # a full disk: the run goes on with the parse it has
        os.unlink(temporary)
        warnings.warn(f"cannot write the annotation cache {path} ({error.strerror})", stacklevel=3)
    except BaseException:
        os.unlink(temporary)
        raise
