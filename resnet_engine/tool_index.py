"""`python -m detection --help` (localization, classification): which command lines exist."""

from __future__ import annotations

import ast
import os
import sys

from .version import __version__

TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def tool_summary(path: str) -> str:
    """The first line of a tool's docstring."""
    with open(path, encoding="utf-8") as handle:
        doc = ast.get_docstring(ast.parse(handle.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def print_tools(package: str, names: list[str]) -> int:
    print(f"{package} {__version__}: command lines (run from the repository root)\n")
    for name in names:
        path = os.path.join(TOOLS_DIR, name)
        if os.path.isfile(path):
            print(f"  python tools/{name:<20} {tool_summary(path)}")
    print("\nEach takes --help; trailing key=value arguments override the config.")
    return 0


def main(package: str, names: list[str]) -> None:
    sys.exit(print_tools(package, names))
