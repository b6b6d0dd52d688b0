"""resnet_engine/files.py: a run's small files are replaced whole or not at all."""

import json

import pytest

from resnet_engine.files import write_json, write_text


def test_a_file_is_replaced_in_one_step_and_its_folders_made(tmp_path):
    path = tmp_path / "run" / "eval" / "metrics.json"
    write_json({"bbox": {"AP": 41.5}}, str(path))
    write_json({"bbox": {"AP": 42.0}}, str(path))
    assert json.loads(path.read_text()) == {"bbox": {"AP": 42.0}}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_older_file_and_leaves_no_partial_one(tmp_path):
    path = tmp_path / "config.yaml"
    write_text(str(path), "seed: 1\n")
    with pytest.raises(TypeError):
        write_text(str(path), None)  # fails inside the write, after the temporary file was opened
    assert path.read_text() == "seed: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    with pytest.raises(TypeError):
        write_json({"x": object()}, str(path))
    assert path.read_text() == "seed: 1\n"
