"""Print every dependency of pyproject.toml pinned to its floor, ``name==version``, one per line:
the requirements file of `make floors`, which installs them into a virtualenv of their own and runs
a fast part of the suite there.

    python tests/floor_requirements.py > floors.txt

A dependency without a floor (``name>=version``) is an error: the floors are what the checks rely on.
"""

from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][0-9A-Za-z.]*)$")


def requirements(pyproject: dict) -> list[str]:
    """The project's dependencies and the packages of every extra, without its references to itself."""
    project = pyproject["project"]
    listed = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        listed += [item for item in group if not item.startswith(project["name"] + "[")]
    return listed


def floor_pins(listed: list[str]) -> list[str]:
    pins = []
    for item in listed:
        match = REQUIREMENT.match(item.split(";")[0].strip())
        if match is None:
            raise ValueError(f"pyproject.toml: {item!r} has no floor: write it as name>=version")
        pins.append(f"{match.group(1)}=={match.group(3)}")
    return sorted(set(pins), key=str.lower)


def main() -> int:
    import tomllib  # Python 3.11+, as `make floors` needs

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        print("\n".join(floor_pins(requirements(tomllib.load(handle)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
