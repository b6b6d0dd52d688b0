#!/usr/bin/env bash
# The checks and figures that need a CUDA GPU, in one run (`make bench-gpu`, or
# `bash benchmarks/gpu_checks.sh [RESULTS_DIR]` with the project installed). On an H100 or H200 it
# takes a few minutes, most of it torch.compile's compilation in the last step.
#
# 1. tests/detection/test_cuda.py: the CUDA paths against the CPU (RoIAlign, NMS, autocast, ...).
# 2. Training steps of R50-FPN against torchvision's at batch 16, 512 px (bench_step_ops.py: one
#    forward and backward, images/s and the operator and sync counts), each written to
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
step_ops --amp bf16 --tag cudagraphs --ours-opts solver.compile_backbone=true solver.compile_mode=reduce-overhead
exit $status
