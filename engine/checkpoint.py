"""Checkpoints that survive crashes: atomic writes, rotation, and fallback to the last good file.

A checkpoint holds everything needed to continue a run exactly: model, optimizer, LR scheduler,
gradient scaler, iteration (which is also the data sampler's position), the RNG states of
python, numpy, torch and CUDA, the config and the run's metadata (class names, ...).
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import warnings

import numpy as np
import torch

from .errors import UserError

logger = logging.getLogger(__name__)

PERIODIC_PATTERN = re.compile(r"model_(\d{7})\.pth$")
FINAL_NAME = "model_final.pth"
BEST_NAME = "model_best.pth"


class CheckpointError(UserError):
    pass


def capture_rng_state() -> dict:
    """RNG states as tensors and plain values, so that ``torch.load(weights_only=True)`` can read them."""
    version, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["position"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def atomic_save(obj, path: str) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint without running code from it; damaged files raise CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, bad pickle, ...
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no 'model' entry)")
    return state


class Checkpointer:
    """Saves and finds the checkpoints of one output directory."""

    def __init__(self, output_dir: str, keep_last: int = 3, enabled: bool = True):
        self.output_dir = output_dir
        self.keep_last = keep_last
        self.enabled = enabled

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def save(self, name: str, state: dict) -> str | None:
        if not self.enabled:
            return None
        path = self.path(name)
        atomic_save(state, path)
        with open(self.path("last_checkpoint.tmp"), "w", encoding="utf-8") as handle:
            handle.write(name)
        os.replace(self.path("last_checkpoint.tmp"), self.path("last_checkpoint"))
        if PERIODIC_PATTERN.search(name):
            self._prune()
        return path

    def save_periodic(self, iteration: int, state: dict) -> str | None:
        return self.save(f"model_{iteration:07d}.pth", state)

    def _prune(self) -> None:
        periodic = sorted(p for p in glob.glob(self.path("model_*.pth")) if PERIODIC_PATTERN.search(p))
        for stale in periodic[: max(0, len(periodic) - self.keep_last)]:
            os.remove(stale)

    def candidates(self) -> list[str]:
        """Checkpoints of this directory, newest first (the last written one leads)."""
        files = [p for p in glob.glob(self.path("model_*.pth")) if os.path.basename(p) != BEST_NAME]
        files.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
        pointer = self.path("last_checkpoint")
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as handle:
                named = self.path(handle.read().strip())
            if named in files:
                files.remove(named)
                files.insert(0, named)
        return files

    def load_latest(self) -> tuple[dict, str] | None:
        """The newest readable checkpoint; damaged ones are reported and skipped."""
        for path in self.candidates():
            try:
                return load_checkpoint(path), path
            except CheckpointError as error:
                warnings.warn(f"{error}; falling back to the previous checkpoint", stacklevel=2)
        return None
