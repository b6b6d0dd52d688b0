"""benchmarks/bench_ilsvrc_cache.py: its generated XML tree and CSV hold the same boxes, and a small run
writes the three timings of each form."""

import json
import sys

from classification.data.ilsvrc import parse_xml_dir, read_kaggle_rows
from classification.data.imagenet import list_train_images
from tests.helpers import load_benchmark_script


def test_the_generated_xml_tree_and_csv_agree(tmp_path):
    xml_dir, csv_path = load_benchmark_script("bench_ilsvrc_cache").write_tree(str(tmp_path), 120)
    from_xml = parse_xml_dir(xml_dir)
    from_csv = read_kaggle_rows(csv_path, is_ground_truth=True)
    assert len(from_xml) == 120 and from_xml == from_csv
    assert {len(objects) for objects in from_xml.values()} == {1, 2, 3}


def test_the_generated_train_tree_lists_every_file_under_its_class(tmp_path):
    root, synsets = load_benchmark_script("bench_ilsvrc_cache").write_train_tree(str(tmp_path), 250)
    records = list_train_images(root, synsets)
    assert len(synsets.wnids) == 3 and len(records) == 250
    assert [sum(r.label == label for r in records) for label in range(3)] == [100, 100, 50]


def test_a_small_run_reports_each_timing(tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    monkeypatch.setenv("RESNET_DETECTION_ANNOTATION_CACHE", str(tmp_path / "cache"))  # restored after the run's own
    monkeypatch.setattr(sys, "argv", ["bench_ilsvrc_cache.py", "--files", "30", "--out", str(out)])
    assert load_benchmark_script("bench_ilsvrc_cache").main() == 0
    result = json.loads(out.read_text())
    assert result["files"] == 30
    for form in ("xml", "csv", "listing"):
        assert set(result[form]) == {"without_cache_s", "build_cache_s", "with_cache_s"}
        assert all(seconds > 0 for seconds in result[form].values())
