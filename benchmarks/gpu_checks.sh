#!/usr/bin/env bash
# The checks and figures that need a CUDA GPU, in one run (`make bench-gpu`, or
# `bash benchmarks/gpu_checks.sh [RESULTS_DIR]` with the project installed). On an H100 or H200 it
# takes a few minutes, most of it torch.compile's compilation in the last step.
#
# 1. tests/detection/test_cuda.py: the CUDA paths against the CPU (RoIAlign, NMS, autocast, ...).
# 2. Training steps of R50-FPN against torchvision's at batch 16, 512 px (bench_step_ops.py: one
#    forward and backward, images/s, the operator and sync counts with where each sync was called,
#    the RPN's proposals alone, one profiled step's kernel time against its wall time), each written to
#    RESULTS_DIR/step_ops_cuda*.json:
#    fp32; bf16 autocast; bf16 with the sync-free gather RoIAlign (model.roi_head.roi_align_impl=gather,
#    which "auto" does not pick on GPUs); bf16 with the backbone compiled into CUDA graphs
#    (solver.compile_mode=reduce-overhead).
# Every step runs even if one fails; the exit status says whether all passed.
set -uo pipefail
results=${1:-benchmarks/results}
python=${PYTHON:-python}
status=0

run() {
    echo "== $*"
    "$@" || { echo "FAILED: $*"; status=1; }
}

step_ops() {
    run "$python" benchmarks/bench_step_ops.py --device cuda --batches 16 --out "$results" "$@"
}

export PYTHONUNBUFFERED=1
run "$python" -m pytest -q -p no:cacheprovider tests/detection/test_cuda.py
step_ops
step_ops --amp bf16
step_ops --amp bf16 --tag gather --ours-opts model.roi_head.roi_align_impl=gather
# Counted at the timed size (--size 512), so that the backbone compiles for one shape, not two: its
# compilation took more than 160 s on an H200.
step_ops --amp bf16 --size 512 --tag cudagraphs --ours-opts solver.compile_backbone=true solver.compile_mode=reduce-overhead
exit $status
