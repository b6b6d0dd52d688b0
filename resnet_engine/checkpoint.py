"""Checkpoints that survive crashes: atomic writes, rotation, and fallback to the last good file.

A checkpoint holds everything needed to continue a run exactly: model, optimizer, LR scheduler,
gradient scaler, iteration (which is also the data sampler's position), the RNG states of
python, numpy, torch and CUDA, the config and the run's metadata (class names, ...).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickletools
import random
import re
import zipfile

import numpy as np
import torch

from .errors import UserError
from .files import write_text
from .run_dir import POINTER_NAME, checkpoint_files

logger = logging.getLogger(__name__)

PERIODIC_PATTERN = re.compile(r"model_(\d{7,})\.pth$")  # 7 digits, more past 10^7 iterations
FINAL_NAME = "model_final.pth"
BEST_NAME = "model_best.pth"


class CheckpointError(UserError):
    pass


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, a quota, a read-only folder)."""


class CheckpointReadError(UserError):
    """The disk, the file system or the memory failed while reading a checkpoint: not a sign that the
    file is damaged, so resume does not fall back past it (nor set it aside) but stops."""


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
        # The devices this process sees now may be fewer than when it was saved (a resume on a node
        # of fewer GPUs): those it still has continue their streams.
        for device, device_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def atomic_save(obj, path: str) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash never leaves half a file. A
    write that fails (a full disk, a quota) removes its partial file and raises CheckpointWriteError."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        # torch.save reports a failed write of its zip writer as a RuntimeError naming the writer.
        if isinstance(error, RuntimeError) and "PytorchStreamWriter" not in str(error):
            raise
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise CheckpointWriteError(f"could not write checkpoint {path} ({reason}): free space on that disk (or "
                                   f"lower solver.keep_last), then continue with --resume from the last "
                                   f"checkpoint") from None


# What torch.save writes for tensors and their containers; anything else in a pickle is an object
# whose loading runs code.
TENSOR_PICKLE_MODULES = ("torch.", "collections.")


def pickled_globals(path: str) -> list[str]:
    """``module.name`` of every class or function a pickle file refers to, read without unpickling
    it (torch's zip format or a plain pickle); as many as could be read from a damaged file."""
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        strings: list[str] = []
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(argument.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(argument, str):
                strings.append(argument)
    except Exception:  # noqa: BLE001 - a truncated or foreign file: what was read so far
        pass
    # Protocol 2 (torch.save's) writes Python 2 module names.
    return [name.replace("__builtin__.", "builtins.", 1) for name in found]


def exported_model_kind(path: str) -> str | None:
    """"ONNX" or "TorchScript" for a file that tools/export.py writes, else None."""
    if path.lower().endswith(".onnx"):
        return "ONNX"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    return "TorchScript" if any(name.endswith("constants.pkl") or "/code/" in name for name in names) else None


def describe_load_failure(path: str, error: BaseException) -> str:
    """One line for a file that ``torch.load(weights_only=True)`` could not read: refused as unsafe
    (it refers to code), or damaged."""
    exported = exported_model_kind(path)
    if exported:
        return (f"{path} is an exported {exported} model, not weights: give the checkpoint it was exported from "
                f"(model_final.pth)")
    foreign = [name for name in pickled_globals(path) if not name.startswith(TENSOR_PICKLE_MODULES)]
    if foreign:
        return (f"{path} was refused as unsafe: it holds pickled objects other than tensors (e.g. {foreign[0]}), "
                f"which could run code when loaded; re-save its tensors alone (torch.save(model.state_dict(), "
                f"...)) from a source you trust")
    other = other_file_kind(path)
    if other:
        return f"{path} is {other}, not a PyTorch checkpoint: give the .pth file that training wrote (model_final.pth)"
    return f"checkpoint {path} is damaged or truncated ({type(error).__name__})"


# The first bytes of files given as weights by mistake, and what they are.
FILE_SIGNATURES = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
                   (b"%PDF", "a PDF document"))


def other_file_kind(path: str) -> str | None:
    """What a file that is no checkpoint plainly is (an image, a config, a text), from its first bytes;
    None when it may be a damaged checkpoint."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    for signature, kind in FILE_SIGNATURES:
        if head.startswith(signature):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # A config or log: lines of readable text with keys (a damaged checkpoint is binary, or a few words).
    if text.isprintable() or all(line.isprintable() for line in text.splitlines()):
        if ":" in text or "=" in text or "{" in text:
            return "a text file (a config or a log?)"
    return None


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """Read a checkpoint without running code from it; unreadable files raise CheckpointError. ``mmap``:
    the tensors are mapped, not read (for its config and meta; a file of the old format is read whole)."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder: give the checkpoint file in it (model_final.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError) as error:
        # torch.load reports a damaged file as RuntimeError, EOFError or UnpicklingError; these come
        # from the machine (an I/O error of a network file system, a full memory) and may pass.
        raise CheckpointReadError(f"could not read checkpoint {path} ({type(error).__name__}: {error}); the file "
                                  f"is kept as it is: run again once it can be read") from None
    except Exception as error:  # noqa: BLE001 - truncated zip, bad pickle, refused object, ...
        raise CheckpointError(describe_load_failure(path, error)) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no 'model' entry)")
    return state


def periodic_iteration(path: str) -> int | None:
    match = PERIODIC_PATTERN.search(path)
    return int(match.group(1)) if match else None


class Checkpointer:
    """Saves and finds the checkpoints of one output directory.

    ``protected`` names a checkpoint that rotation never deletes: the trainer's last good one.
    """

    def __init__(self, output_dir: str, keep_last: int = 3, enabled: bool = True):
        self.output_dir = output_dir
        self.keep_last = keep_last
        self.enabled = enabled
        self.protected: str | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def _model_files(self) -> list[str]:
        """The paths of checkpoint_files: one listing, which takes an output_dir holding [, * or ? literally."""
        return [self.path(name) for name in checkpoint_files(self.output_dir)]

    def save(self, name: str, state: dict) -> str | None:
        if not self.enabled:
            return None
        path = self.path(name)
        atomic_save(state, path)
        self.point_to(path)
        if PERIODIC_PATTERN.search(name):
            self._prune()
        return path

    def save_periodic(self, iteration: int, state: dict) -> str | None:
        return self.save(f"model_{iteration:07d}.pth", state)

    def point_to(self, path: str) -> None:
        """Make ``path`` the checkpoint that --resume tries first."""
        write_text(self.path(POINTER_NAME), os.path.basename(path))

    def _prune(self) -> None:
        """Delete the oldest periodic checkpoints beyond keep_last, never the protected one. Only
        this run's files are here (resnet_engine.run_dir refuses a fresh run over an earlier one)."""
        periodic = sorted((p for p in self._model_files() if PERIODIC_PATTERN.search(p)), key=periodic_iteration)
        for stale in periodic[: max(0, len(periodic) - self.keep_last)]:
            if self.protected is None or os.path.abspath(stale) != os.path.abspath(self.protected):
                os.remove(stale)

    def set_aside(self, path: str, reason: str) -> str:
        """Rename a checkpoint out of the rotation (``NAME.pth.<reason>``), keeping it for inspection."""
        target = f"{path}.{reason}"
        if self.enabled and os.path.isfile(path):
            os.replace(path, target)
        return target

    def candidates(self) -> list[str]:
        """Every full trainer state of this directory (periodic, final and best), newest first;
        the one last_checkpoint names leads."""
        files = self._model_files()
        files.sort(key=lambda p: (os.path.getmtime(p), periodic_iteration(p) or 0), reverse=True)
        pointer = self.path(POINTER_NAME)
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as handle:
                named = self.path(handle.read().strip())
            if named in files:
                files.remove(named)
                files.insert(0, named)
        return files

    def load_latest(self) -> tuple[dict, str, list[tuple[str, str]]] | None:
        """The newest readable checkpoint, with the (path, reason) of the newer ones that could not be
        read; None when the directory holds no checkpoint. A read that the machine failed
        (CheckpointReadError) stops the search: an older checkpoint would lose the newer one's work."""
        candidates = self.candidates()
        unreadable = []
        for path in candidates:
            try:
                return load_checkpoint(path), path, unreadable
            except CheckpointError as error:
                unreadable.append((path, str(error)))
        if candidates:
            reasons = "; ".join(reason for _, reason in unreadable[:2])
            raise CheckpointError(f"none of the {len(candidates)} checkpoints in {self.output_dir} can be read "
                                  f"({reasons}): start afresh with --overwrite, or in another output_dir")
        return None


def weights_are_finite(model_state: dict) -> bool:
    return all(bool(torch.isfinite(value).all()) for value in model_state.values()
               if torch.is_tensor(value) and value.is_floating_point())


class GoodCheckpoints:
    """Which checkpoints of a run are safe to continue from.

    A checkpoint holds the weights of one iteration; the forward pass that follows it (in the same
    run, or the first one after resuming from it) computes the loss *of those weights*. The
    checkpoint is good once that loss is finite and not orders of magnitude above the run's
    typical loss (a run that diverges grows its loss by many orders before it overflows), and its
    weights are finite. A checkpoint whose own weights give a non-finite loss is the state that
    produced it: resuming from it fails the same way.
    """

    # A loss this many times the lowest logged mean marks the weights as diverged.
    DIVERGENCE_FACTOR = 1e4

    def __init__(self):
        self.pending: list[str] = []   # saved or resumed, their loss not seen yet
        self.diverged: list[str] = []  # their loss was non-finite or exploding, or their weights non-finite
        self.last_good: str | None = None
        self.typical_loss = math.inf

    def saved(self, path: str | None, model_state: dict) -> None:
        if path is None:  # not the main process
            return
        if path in self.pending or path in self.diverged:  # rewritten under the same name
            self.pending = [p for p in self.pending if p != path]
            self.diverged = [p for p in self.diverged if p != path]
        if path == self.last_good:
            # model_best.pth rewritten with newer weights: no longer the state whose loss was seen.
            self.last_good = None
        (self.pending if weights_are_finite(model_state) else self.diverged).append(path)

    def loss_seen(self, value: float) -> None:
        """A finite loss computed from the current weights, before they change."""
        reference = self._reference(value)
        if not self.pending:
            return
        if math.isfinite(value) and value <= self.DIVERGENCE_FACTOR * reference:
            self.last_good = self.pending[-1]
        else:
            self.diverged.extend(self.pending)
        self.pending = []

    def typical_loss_seen(self, mean: float) -> None:
        if math.isfinite(mean):
            self.typical_loss = min(self.typical_loss, mean)

    def not_good(self) -> list[str]:
        """Checkpoints written or resumed after the last good one."""
        return [p for p in self.diverged + self.pending if p != self.last_good]

    def _reference(self, value: float) -> float:
        if not math.isfinite(self.typical_loss):
            self.typical_loss = value  # before the first logged mean: the first loss seen
        return self.typical_loss
