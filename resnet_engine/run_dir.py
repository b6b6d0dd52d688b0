"""The output folder of a training run: one run at a time, and an earlier run is never overwritten by accident.

A training run claims its ``output_dir`` before it writes anything there:

- it takes an exclusive lock (``output_dir/.lock``, an ``flock`` that the system releases when the
  process ends, however it ends); a second run on the same folder stops with one line naming the holder;
- it removes the temporary files that a killed checkpoint write left behind (holding the lock,
  nothing else can be writing them);
- a fresh run (not ``--resume``) in a folder that holds another run's checkpoints stops with one
  line, unless ``overwrite`` is given: then those checkpoints are deleted and the earlier
  metrics.jsonl is kept as metrics.N.jsonl.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import glob
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Sequence

from .errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
POINTER_NAME = "last_checkpoint"


class RunDirectoryError(UserError):
    pass


def checkpoint_files(output_dir: str) -> list[str]:
    """Every trainer checkpoint in the folder (periodic, final, best), by name."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(output_dir), "model_*.pth")))


def evaluation_dir(output_dir: str, weights: str | Sequence[str]) -> str:
    """Where an evaluation of ``weights`` after training writes by default: output_dir/eval_<weights file
    stem> (eval_ensemble for several files). The run's own metrics.json is its training's final evaluation,
    which an evaluation of another checkpoint, or with other test settings, must not replace."""
    files = [weights] if isinstance(weights, str) else list(weights)
    stem = "ensemble" if len(files) > 1 else os.path.splitext(os.path.basename(os.path.normpath(files[0])))[0]
    return os.path.join(output_dir, "eval_" + re.sub(r"[^\w.+-]+", "_", stem))


# What a write that never finished leaves: atomic_save's NAME.tmp.PID and the small files' NAME.tmp.
TEMPORARY_PATTERNS = ("*.pth.tmp.*", f"{POINTER_NAME}.tmp", "metrics.json.tmp", "metrics.jsonl.tmp", "config.yaml.tmp")


def stale_temporary_files(output_dir: str) -> list[str]:
    """Unfinished writes of earlier processes; only call this while holding the folder's lock."""
    found = set()
    for pattern in TEMPORARY_PATTERNS:
        found.update(p for p in glob.glob(os.path.join(glob.escape(output_dir), pattern)) if os.path.isfile(p))
    return sorted(found)


class RunDirectory:
    """The claim of one process on one output folder; see the module docstring."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.lock_path = os.path.join(output_dir, LOCK_NAME)
        self._lock_file = None

    @property
    def held(self) -> bool:
        return self._lock_file is not None

    def create(self) -> None:
        if not self.output_dir:
            raise RunDirectoryError("output_dir is empty: set output_dir=FOLDER, the folder of the run's files")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise RunDirectoryError(f"output_dir {self.output_dir} is a file, not a folder: "
                                    f"choose another output_dir")
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as error:
            raise RunDirectoryError(f"cannot create output_dir {self.output_dir} ({error.strerror}): "
                                    f"choose another output_dir") from None

    def lock(self, wait_seconds: float = 0) -> None:
        """Take the folder's lock, or stop with one line naming the process that holds it (after trying
        for ``wait_seconds``: a process that is ending may hold it for a moment)."""
        handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run's life
        try:
            _flock_within(handle, wait_seconds)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # A file system without locks (some network mounts): run on, unguarded, and say so.
                logger.warning("cannot lock %s (%s): a second run on this folder would not be stopped",
                               self.lock_path, error.strerror)
                self._lock_file = handle
                return
            holder = _read_holder(handle)
            handle.close()
            raise RunDirectoryError(
                f"output_dir {self.output_dir} is in use by another run ({holder}): wait for it to end, "
                f"or give this run another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder_record()) + "\n")
        handle.flush()
        self._lock_file = handle

    def release(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):  # never locked, on a file system without locks
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def remove_stale_temporary_files(self) -> None:
        stale = stale_temporary_files(self.output_dir)
        for path in stale:
            os.remove(path)
        if stale:
            logger.info("removed %d unfinished file(s) of an interrupted write from %s, e.g. %s", len(stale),
                        self.output_dir, os.path.basename(stale[0]))

    def refuse_earlier_run(self, overwrite: bool = False) -> None:
        """Stop a fresh run in a folder that holds another run's checkpoints (or delete them with overwrite)."""
        earlier = checkpoint_files(self.output_dir)
        if not earlier:
            return
        if not overwrite:
            more = f" and {len(earlier) - 1} more" if len(earlier) > 1 else ""
            raise RunDirectoryError(
                f"output_dir {self.output_dir} holds the checkpoints of an earlier run ({earlier[-1]}{more}): "
                f"continue it with --resume, give this run another output_dir, or pass --overwrite to "
                f"delete them and start afresh")
        for name in earlier + [POINTER_NAME]:
            path = os.path.join(self.output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        logger.warning("--overwrite: deleted %d checkpoint(s) of the earlier run in %s", len(earlier),
                       self.output_dir)


def _flock_within(handle, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as error:
            busy = error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def _read_holder(handle) -> str:
    handle.seek(0)
    try:
        record = json.loads(handle.read().strip() or "{}")
    except json.JSONDecodeError:
        record = {}
    if not record:
        return "holder unknown"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: "
            f"{record.get('command', '')}".rstrip(": "))


# One claim per folder and process: setup_run claims the folder before any work, the Trainer finds
# the same claim (or makes it, for callers that build a Trainer directly) and releases it at the end.
_claims: dict[str, RunDirectory] = {}


def claim_run_directory(output_dir: str, wait_seconds: float = 0) -> RunDirectory:
    """Create ``output_dir``, lock it (waiting up to ``wait_seconds`` for another holder to end) and clean
    it; the same claim again when this process holds it."""
    key = os.path.realpath(output_dir)
    claim = _claims.get(key)
    if claim is not None and claim.held:
        return claim
    claim = RunDirectory(output_dir)
    claim.create()
    claim.lock(wait_seconds)
    claim.remove_stale_temporary_files()
    _claims[key] = claim
    return claim


def release_run_directory(output_dir: str) -> None:
    claim = _claims.pop(os.path.realpath(output_dir), None)
    if claim is not None:
        claim.release()
