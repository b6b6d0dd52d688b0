"""The counting of benchmarks/bench_step_ops.py: top-level aten calls and sync-forcing calls."""

import torch
import torch.nn.functional as F

from tests.helpers import load_benchmark_script


def test_top_level_calls_exclude_nested_aten_ops_and_syncs_are_split_by_where_they_ran():
    bench = load_benchmark_script("bench_step_ops")
    x, weight = torch.ones(2, 3), torch.ones(4, 3)

    def step():
        with torch.profiler.record_function(bench.FORWARD):
            y = F.linear(x, weight)        # 1 top-level call (its t/addmm are nested)
            z = y + 1                      # 1
            kept = z[z > 0]                # 2: gt, index (which calls nonzero inside)
        kept.sum().item()                  # 2: sum, item (which calls _local_scalar_dense), outside the model

    counts = bench.profile(step)
    assert counts["aten_calls"] == 6
    assert counts["sync_calls"]["model"] == {"aten::nonzero": 1}
    assert counts["sync_calls"]["elsewhere"] == {"aten::_local_scalar_dense": 1, "aten::item": 1}
    assert counts["sync_points_in_model"] == 1
    assert counts["sync_sites_in_model"] == {}  # no stacks recorded


def test_syncs_in_the_model_are_traced_to_the_function_of_this_repository_that_called_them():
    bench = load_benchmark_script("bench_step_ops")
    x = torch.arange(-2.0, 3.0)

    def step():
        with torch.profiler.record_function(bench.FORWARD):
            x[x > 0].sum().item()  # nonzero (in the mask index), _local_scalar_dense (in item)

    counts = bench.profile(step, with_stack=True)
    line = step.__code__.co_firstlineno  # the profiler names a function by the line of its def
    assert counts["sync_sites_in_model"] == {f"tests/benchmarks/test_bench_step_ops.py({line}): step": 2}


def test_one_tiny_step_of_each_detector_is_counted():
    bench = load_benchmark_script("bench_step_ops")
    rows = bench.count_rows([2], 64, torch.device("cpu"), depth=18)
    assert [(r["model"], r["batch"]) for r in rows] == [("ours", 2), ("torchvision", 2)]
    for row in rows:
        # A ResNet-18 FPN step has far more than its ~60 convolutions' worth of top-level calls.
        assert row["aten_calls"] > 200
        assert row["sync_calls"]["elsewhere"] == {}
    table = bench.count_table(rows)
    assert f"| 2 | {rows[0]['aten_calls']} | {rows[1]['aten_calls']} |" in table


def test_the_proposal_rows_time_the_rpn_on_the_pyramids_candidate_counts():
    bench = load_benchmark_script("bench_step_ops")
    detectors = {"ours": (bench.our_detector(18, torch.device("cpu")), bench.our_step)}
    rows = bench.proposal_rows([1, 2], 128, torch.device("cpu"), 1, detectors)
    # 3 anchors per cell at strides 4..64 of a 128 px image: 3072, 768, 192, 48, 12; at most 2000 per
    # level go to NMS (coco_r50_fpn.yaml's pre_nms_topk_train).
    assert [(r["batch"], r["candidates_per_image"]) for r in rows] == [(1, 3020), (2, 3020)]
    assert all(r["propose_s"] > 0 and abs(r["per_image_s"] - r["propose_s"] / r["batch"]) <= 1e-4 for r in rows)
