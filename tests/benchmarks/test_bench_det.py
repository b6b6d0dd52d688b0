"""The bookkeeping of benchmarks/bench_det.py: paired ratios and results files."""

import json

from tests.helpers import load_benchmark_script


def load_bench():
    return load_benchmark_script("bench_det")


def test_ratio_pairs_each_run_with_its_neighbour():
    bench = load_bench()
    # The machine slows down twofold after the first run: the pairs keep a constant 2x.
    reference, ours = [2.0, 4.0, 4.0], [1.0, 2.0, 2.0]
    assert bench.paired_ratio(reference, ours) == 2.0
    # Per-run ratios 3, 1.5 and 3: their median is 3, where the ratio of the medians (3 / 2) would
    # take its numerator and denominator from different runs.
    assert bench.paired_ratio([3.0, 3.0, 6.0], [1.0, 2.0, 2.0]) == 3.0


def test_results_keep_the_rows_of_other_settings(tmp_path):
    bench = load_bench()
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": [{"setting": "a", "ratio": 1.0}, {"setting": "b", "ratio": 1.0}]}))
    rows = bench.merged_rows(str(path), [{"setting": "b", "ratio": 2.0}])
    assert rows == [{"setting": "a", "ratio": 1.0}, {"setting": "b", "ratio": 2.0}]
    assert bench.merged_rows(str(tmp_path / "missing.json"), [{"setting": "c"}]) == [{"setting": "c"}]
