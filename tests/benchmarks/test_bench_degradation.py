"""The verdict of benchmarks/bench_degradation.py: which way depth moves each family's training error."""

from tests.helpers import load_benchmark_script


def runs(plain20, plain56, resnet20, resnet56):
    return [{"depth": 20, "residual": False, "train_error": plain20}, {"depth": 20, "residual": True, "train_error": resnet20},
            {"depth": 56, "residual": False, "train_error": plain56}, {"depth": 56, "residual": True, "train_error": resnet56}]


def test_the_verdict_compares_the_shallowest_and_the_deepest_net_of_each_family():
    bench = load_benchmark_script("bench_degradation")
    assert bench.degradation_shows(runs(10.0, 30.0, 8.0, 5.0)) == {
        "plain_deeper_trains_worse": True, "residual_deeper_trains_better": True}
    assert bench.degradation_shows(runs(30.0, 10.0, 5.0, 8.0)) == {
        "plain_deeper_trains_worse": False, "residual_deeper_trains_better": False}
