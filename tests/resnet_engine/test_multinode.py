"""Two torchrun nodes on one machine (a c10d rendezvous on 127.0.0.1, one CPU process each, gloo) train
as one process with the same global batch: the same images at every step, the same learning rates and,
to float rounding, the same weights.

Not bit-exact: each node's process computes the gradient of its one image and DDP averages the two,
where the single process computes the gradient of both images in one batch; the sums run in another
order, and the ~1e-7 relative differences grow a little over the steps."""

import os
import signal
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


NODE_TIMEOUT = 240


def launch_node(node_rank: int, port: int, run_id: str, args: list[str]) -> subprocess.Popen:
    """One torchrun agent and its worker. PYTHONFAULTHANDLER makes both print every thread's Python
    stack on SIGABRT, which is how a hang is reported."""
    options = ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}"]
    return subprocess.Popen(torchrun_command(*options) + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=environment(PYTHONFAULTHANDLER="1"))


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own, so a process
    group would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue  # not a process, or one that has just exited
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending.extend(children.get(tree[-1], []))
    return tree


def send_signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # exited meanwhile


def wait_for_nodes(nodes: list[subprocess.Popen]) -> list[str]:
    """Each node's output once both have exited. A node still running after NODE_TIMEOUT seconds is
    hung: every process of both nodes is aborted, so that the failure shows where each one was."""
    outputs: list[str | None] = [None] * len(nodes)
    try:
        for index, node in enumerate(nodes):
            outputs[index] = node.communicate(timeout=NODE_TIMEOUT)[0]
        return outputs
    except subprocess.TimeoutExpired:
        pass
    # Both trees first, then the signals: one snapshot of where every process was.
    send_signal([pid for node in nodes for pid in process_tree(node.pid)], signal.SIGABRT)
    outputs = [output if output is not None else node.communicate(timeout=60)[0]
               for node, output in zip(nodes, outputs)]
    report = "\n".join(f"--- node {index}:\n{output[-6000:]}" for index, output in enumerate(outputs))
    pytest.fail(f"the nodes did not finish within {NODE_TIMEOUT} s; their output, with the Python stack of each "
                f"process at the time:\n{report}")


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_process(cifar_root, tmp_path):  # noqa: F811
    args = tiny_run_args(cifar_root, tmp_path / "two_nodes")
    port, run_id = free_port(), f"test-{uuid.uuid4().hex[:8]}"
    nodes = [launch_node(rank, port, run_id, args) for rank in (0, 1)]
    try:
        outputs = wait_for_nodes(nodes)
    finally:
        for node in nodes:
            if node.poll() is None:
                send_signal(process_tree(node.pid), signal.SIGKILL)
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
