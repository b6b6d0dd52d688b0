"""The README's Python example runs, and prints what the README says it prints."""

import contextlib
import io
import os
import re

import torch

from tests.conftest import ROOT


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_backbone_example_runs_and_prints_what_it_claims():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        blocks = python_blocks(handle.read())
    assert blocks, "README has no python example"
    for block in blocks:
        expected = [line.lstrip("# ").strip() for line in block.splitlines() if line.startswith("# ")]
        output = io.StringIO()
        torch.manual_seed(0)
        with contextlib.redirect_stdout(output):
            exec(compile(block, "README.md", "exec"), {})
        printed = [line.strip() for line in output.getvalue().splitlines()]
        assert printed == expected
