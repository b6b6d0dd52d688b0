"""Training logs: JSON lines (``metrics.jsonl``) and TensorBoard events, written by the main process."""

from __future__ import annotations

import json
import logging
import math
import os
import sys

from tqdm import tqdm

from .config import flatten_tree

logger = logging.getLogger(__name__)


def flatten_metrics(record: dict) -> dict[str, float]:
    """The numbers of a nested metrics record by their "/"-joined names ("bbox/AP"), as TensorBoard
    and the plots name them."""
    return {name: float(value) for name, value in flatten_tree(record, "/")
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class MetricsLogger:
    """Appends records to ``output_dir/metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                logger.warning("tensorboard is not installed: only metrics.jsonl is written")

    def start_fresh(self) -> None:
        """A run from iteration 0 in a folder that has a log: keep the old log as metrics.N.jsonl
        (the first free N) rather than mixing two runs in one file."""
        if not self.enabled or not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        number = 1
        while os.path.exists(self.path[: -len(".jsonl")] + f".{number}.jsonl"):
            number += 1
        kept = self.path[: -len(".jsonl")] + f".{number}.jsonl"
        os.replace(self.path, kept)
        logger.info("a new run in %s: the earlier metrics.jsonl is kept as %s", os.path.dirname(self.path),
                    os.path.basename(kept))

    def truncate_after(self, iteration: int) -> None:
        """Drop records newer than ``iteration`` (a resumed run repeats them)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("iteration", 0) <= iteration:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)

    def log(self, iteration: int, metrics: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"iteration": iteration, "type": kind, **metrics}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
        if self.writer is not None:
            for name, value in flatten_metrics(metrics).items():
                if math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{name}", value, iteration)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(obj, path: str) -> None:
    """``obj`` as indented JSON at ``path`` (folders made as needed), replacing any older file in one
    step: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2)
    os.replace(path + ".tmp", path)


def progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                unit="it", smoothing=0.1)
