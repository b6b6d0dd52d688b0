"""What every command line shares: argument parsing and one-line messages for user errors."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable

from .errors import is_user_error


def config_parser(description: str, default_cfg: str | None = None) -> argparse.ArgumentParser:
    """``--cfg FILE`` plus trailing ``key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    help_text = "YAML config file" + (f" (default: {default_cfg})" if default_cfg else "")
    parser.add_argument("--cfg", default=default_cfg, help=help_text)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, values parsed as YAML, e.g. solver.max_iter=1000")
    return parser


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    return f"warning: {message}\n"


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and turn user errors into ``error: ...`` on stderr with exit code 2."""
    warnings.formatwarning = _one_line_warnings
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code = 1
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as error:  # noqa: BLE001 - user errors become one line, the rest propagate
        if not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        code = getattr(error, "exit_code", 2)
    finally:
        _leave_process_group(wait_for_others=not code)
    sys.exit(code or 0)


def _leave_process_group(wait_for_others: bool) -> None:
    """Leave torchrun's process group in step with the other processes. A process that exits with
    the group alive, or tears it down while a peer still talks to it, can be aborted by gloo
    ("terminate called without an active exception"), failing a run that succeeded. After an
    error the others may never arrive, so only a successful run waits for them."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if wait_for_others:
        dist.barrier()
    dist.destroy_process_group()
