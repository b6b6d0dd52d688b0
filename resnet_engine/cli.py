"""What every command line shares: argument parsing and one-line messages for user errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable

from .errors import UserError, is_user_error
from .extras import missing_package_error


class ToolParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line, ``error: ...`` as every other error of the tools,
    with where the options are listed, rather than the usage block first. Options are taken whole only:
    argparse's abbreviations would read ``--ov`` as ``--overwrite``, which deletes a run."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (python {self.prog} --help lists the options)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number: give 1 or more")
    return value


def non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give 0 or more")
    return value


def unit_fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (a score threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..1: scores are probabilities")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


class OverridesParser(ToolParser):
    """An argument parser whose ``key=value`` overrides may stand before, between or after the options.

    Plain argparse fills a ``nargs="*"`` positional from the first run of positionals only, so
    ``--cfg X a=1 --resume b=2`` would fail on ``b=2`` ("unrecognized arguments"), and an option of
    several values (``--depths 20 56 a=1``) would take the overrides after it as its own. So the words
    that look like overrides are taken out first, except the value of an option of one value.
    """

    def __init__(self, *args, **kwargs):
        self.one_value_options: set[str] = set()
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.nargs in (None, 1):
            self.one_value_options.update(action.option_strings)
        return action

    def parse_args(self, args=None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        rest, overrides = self.split_overrides(words)
        parsed = self.parse_intermixed_args(rest, namespace)
        if hasattr(parsed, "overrides"):
            parsed.overrides = overrides + list(parsed.overrides or [])
        elif overrides:
            self.error(f"unrecognized arguments: {' '.join(overrides)}")
        return parsed

    def split_overrides(self, words: list[str]) -> tuple[list[str], list[str]]:
        """(the other words, the overrides in their order)."""
        rest, overrides = [], []
        for index, word in enumerate(words):
            is_value = index > 0 and words[index - 1] in self.one_value_options
            (overrides if looks_like_override(word) and not is_value else rest).append(word)
        return rest, overrides


OVERRIDE_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


def looks_like_override(text: str) -> bool:
    """``solver.max_iter=5`` and the like (a file name such as ``a=b.jpg`` that exists is not one)."""
    return bool(OVERRIDE_PATTERN.match(text)) and not os.path.exists(text)


def config_parser(description: str, default_cfg: str | None = None) -> argparse.ArgumentParser:
    """``--cfg FILE`` plus ``key=value`` overrides, anywhere on the command line."""
    parser = OverridesParser(description=description)
    add_config_arguments(parser, default_cfg)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, default_cfg: str | None) -> None:
    help_text = "YAML config file" + (f" (default: {default_cfg})" if default_cfg else "")
    parser.add_argument("--cfg", default=default_cfg, help=help_text)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, values parsed as YAML, e.g. solver.max_iter=1000")


class TrainingParser(OverridesParser):
    """--resume and --overwrite ask for opposite things: given together, one would be ignored."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if parsed.resume and parsed.overwrite:
            self.error("--resume continues the run in output_dir and --overwrite deletes it: give one of them")
        return parsed


def training_parser(description: str, default_cfg: str, folder: str = "output_dir") -> argparse.ArgumentParser:
    """config_parser plus the options every trainer has: ``--resume`` and ``--overwrite``; ``folder`` says
    where the run's checkpoints are, for their help."""
    parser = TrainingParser(description=description)
    add_config_arguments(parser, default_cfg)
    parser.add_argument("--resume", action="store_true", help=f"continue from the last checkpoint in {folder}")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"start afresh where {folder} holds an earlier run's checkpoints (deletes them)")
    return parser


def check_output_folder(path: str, option: str) -> None:
    """Stop before any work when ``path`` cannot be (or become) a writable folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path} is a file, not a folder: give a folder for the outputs")
    _check_writable_folder(path, option)


def check_output_file(path: str, option: str, example_name: str) -> None:
    """Stop before any work when ``path`` cannot be written as a file: it is a folder, or a folder
    above it is a file or not writable."""
    if os.path.isdir(path):
        raise UserError(f"{option} {path} is a folder: give the file to write, such as "
                        f"{os.path.join(path, example_name)}")
    _check_writable_folder(os.path.dirname(os.path.abspath(path)), option, path)


def check_derived_file(path: str, option: str, example_name: str, source: str, source_option: str,
                       consequence: str, overwrite: bool) -> None:
    """check_output_file for a tool that writes one file from another: never over that input (``consequence``
    says what would be lost), and over any other existing file only with --overwrite."""
    check_output_file(path, option, example_name)
    if os.path.realpath(path) == os.path.realpath(source):
        raise UserError(f"{option} {path} is the {source_option} file: {consequence}; give another {option}")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{option} {path} exists: give another {option}, or pass --overwrite to replace it")


def _check_writable_folder(folder: str, option: str, given: str | None = None) -> None:
    """``folder``, or the nearest existing folder above it (where it will be made), accepts new files."""
    given = given or folder
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{option} {given}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{option} {given}: cannot write in {existing} (permission denied)")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM (a job scheduler's stop, ``kill PID``) raises KeyboardInterrupt as
    Ctrl-C does, so that ``finally`` blocks close their files. Outside the main thread: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    return f"warning: {message}\n"


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and turn user errors into ``error: ...`` on stderr with exit code 2."""
    warnings.formatwarning = _one_line_warnings
    # PyTorch 2.4 (the floor) calls onnxscript API that onnxscript marks as deprecated, on import of
    # torchvision.ops: notes for PyTorch's developers, not for the user of a command.
    warnings.filterwarnings("ignore", category=FutureWarning, module="onnxscript")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code = 1
    try:
        code = main()
    except KeyboardInterrupt as interrupt:
        # Ctrl-C, or SIGTERM under sigterm_as_interrupt; the exit code is the signal's by convention.
        name = str(interrupt)
        print(f"interrupted by {name}" if name else "interrupted", file=sys.stderr)
        code = 128 + (signal.Signals[name] if name in signal.Signals.__members__ else signal.SIGINT)
    except Exception as error:  # noqa: BLE001 - user errors become one line, the rest propagate
        # An optional package that is not installed is the user's to install: one line naming its extra.
        error = missing_package_error(error) if isinstance(error, ImportError) else error
        if error is None or not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        code = getattr(error, "exit_code", 2)
    finally:
        _leave_process_group(code)
    sys.exit(code or 0)


def _leave_process_group(code: int | None) -> None:
    """End a process that joined torchrun's process group, without the interpreter's shutdown.

    After a success it leaves the group in step with the other processes first. After a failure the
    others may be gone or inside a collective that never ends, so it does not wait for them, nor tear
    the group down under them. Either way it then ends at once, as a killed process would, once what
    it printed and logged is out: gloo can abort a process in C++ ("terminate called without an
    active exception") at a teardown under a peer, or at the interpreter's shutdown when an object
    that holds the group (a DDP model in a reference cycle) is freed only then. Under load that
    turned about one run in ten, successful ones included, into exit code -6, which torchrun reports
    as a failed worker (and restarts, with --max-restarts). Checkpoints, logs and trackers are closed
    by then (the trainer closes them before it returns or raises).

    The group is joined through resnet_engine.distributed, so a command that never loaded that module
    (and torch with it, as --help does not) has none to leave and exits normally."""
    distributed = sys.modules.get("resnet_engine.distributed")
    if distributed is None or not distributed.is_distributed():
        return
    in_flight = sys.exc_info()[1]  # an exception on its way out of run_cli, whose traceback is still to print
    if isinstance(in_flight, SystemExit):
        code = in_flight.code if isinstance(in_flight.code, int) else 1
    elif in_flight is not None:
        traceback.print_exception(in_flight)
        code = 1
    elif not code:
        distributed.leave_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
