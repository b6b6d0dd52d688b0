"""`python -m detection --help` (localization, classification): which command lines exist.

Installed, each command line is a console script (``resnet-train-det``) whose module lives in the
package ``resnet_tools``; in a source checkout it is also ``python tools/train_det.py``. The tools'
files are read, never imported: tools import the library, not the other way round.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import os
import sys

from .version import __version__

TOOLS_PACKAGE = "resnet_tools"
# The source checkout's tools/ folder (absent from an installed wheel, where resnet_tools holds the files).
CHECKOUT_TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def tool_summary(path: str) -> str:
    """The first line of a tool's docstring."""
    with open(path, encoding="utf-8") as handle:
        doc = ast.get_docstring(ast.parse(handle.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def tools_dir() -> str | None:
    """The folder of the tools' files: the installed package's, else the checkout's tools/."""
    try:
        return str(importlib.resources.files(TOOLS_PACKAGE))
    except ModuleNotFoundError:
        return CHECKOUT_TOOLS_DIR if os.path.isdir(CHECKOUT_TOOLS_DIR) else None


def console_scripts() -> dict[str, str]:
    """{tool module name: console script name} of the installed toolkit (none when it is not installed)."""
    scripts = {}
    for entry in importlib.metadata.entry_points(group="console_scripts"):
        module = entry.value.split(":")[0]
        if module.startswith(TOOLS_PACKAGE + "."):
            scripts[module.split(".", 1)[1]] = entry.name
    return scripts


def print_tools(package: str, names: list[str]) -> int:
    folder, scripts = tools_dir(), console_scripts()
    in_checkout = os.path.isdir(CHECKOUT_TOOLS_DIR)
    rows = []
    for name in names:
        path = os.path.join(folder, name) if folder else ""
        if os.path.isfile(path):
            forms = [scripts.get(os.path.splitext(name)[0], "")] + ([f"python tools/{name}"] if in_checkout else [])
            rows.append([*forms, tool_summary(path)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)] if rows else []
    print(f"{package} {__version__}: command lines\n")
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print("\nEach takes --help; the tools that read a config take key=value arguments that override it.")
    return 0


def main(package: str, names: list[str]) -> None:
    """``python -m PACKAGE [--help]``: the list of its tools. Anything else is one line and exit status 2:
    ``python -m detection train_det`` listed the tools and succeeded, having run nothing."""
    arguments = sys.argv[1:]
    if arguments and arguments not in (["-h"], ["--help"]):
        print(f"error: python -m {package} lists its tools and takes no arguments (given: {' '.join(arguments)}): "
              f"run a tool itself, such as python tools/{names[0]} --help", file=sys.stderr)
        sys.exit(2)
    sys.exit(print_tools(package, names))
