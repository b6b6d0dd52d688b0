"""Two torchrun nodes on one machine (a c10d rendezvous on 127.0.0.1, one CPU process each, gloo) train
as one process with the same global batch: the same images at every step, the same learning rates and,
to float rounding, the same weights.

Not bit-exact: each node's process computes the gradient of its one image and DDP averages the two,
where the single process computes the gradient of both images in one batch; the sums run in another
order, and the ~1e-7 relative differences grow a little over the steps."""

import subprocess
import uuid

import pytest

from .multiprocess_training import (
    cifar_root,  # noqa: F401 - a fixture
    environment,
    final_weights,
    free_port,
    global_batches,
    largest_difference,
    run_alone,
    tiny_run_args,
    torchrun_command,
    train_records,
)

TOLERANCE = 5e-5


def launch_node(node_rank: int, port: int, run_id: str, args: list[str]) -> subprocess.Popen:
    options = ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}"]
    return subprocess.Popen(torchrun_command(*options) + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=environment())


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_process(cifar_root, tmp_path):  # noqa: F811
    args = tiny_run_args(cifar_root, tmp_path / "two_nodes")
    port, run_id = free_port(), f"test-{uuid.uuid4().hex[:8]}"
    nodes = [launch_node(rank, port, run_id, args) for rank in (0, 1)]
    outputs = []
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    one = run_alone(tiny_run_args(cifar_root, tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]

    two_nodes, single = global_batches(tmp_path / "two_nodes"), global_batches(tmp_path / "one")
    assert sorted(two_nodes) == list(range(6)) and all(len(images) == 2 for images in two_nodes.values())
    assert two_nodes == single
    records_two, records_one = train_records(tmp_path / "two_nodes"), train_records(tmp_path / "one")
    assert [(r["iteration"], r["lr"]) for r in records_two] == [(r["iteration"], r["lr"]) for r in records_one]
    assert [r["lr"] for r in records_one] == pytest.approx([0.02, 0.002])
    assert [r["total_loss"] for r in records_two] == pytest.approx([r["total_loss"] for r in records_one],
                                                                  abs=1e-4)
    assert largest_difference(final_weights(tmp_path / "two_nodes"), final_weights(tmp_path / "one")) <= TOLERANCE
