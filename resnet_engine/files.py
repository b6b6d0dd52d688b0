"""Writing a run's small files (configs, metrics, pointers) so that a reader, or a run killed during the
write, never sees half a file: the text goes to NAME.tmp beside it, then replaces the file in one step."""

from __future__ import annotations

import contextlib
import json
import os


def write_text(path: str, text: str) -> None:
    """``text`` at ``path`` (folders made as needed), replacing any older file in one step."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
    except BaseException:
        with contextlib.suppress(OSError):  # a failed write leaves the older file, and no partial one
            os.remove(path + ".tmp")
        raise


def write_json(obj, path: str) -> None:
    """``obj`` as indented JSON at ``path``, as :func:`write_text` writes."""
    write_text(path, json.dumps(obj, indent=2))
