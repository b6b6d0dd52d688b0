"""The process-group helpers: in one process (no group) and in a real group of two CPU processes
(gloo) joined the way torchrun describes it, checking what each rank receives."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from resnet_engine import distributed
from resnet_engine.errors import UserError


class BadKey(UserError):
    """A project-style user error, to check that its class survives the trip to the other ranks."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: join the group from torchrun's variables, exercise every helper, write what it saw."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_distributed(torch.device("cpu"), timeout_minutes=2)
    seen = {"rank": distributed.get_rank(), "world": distributed.get_world_size(),
            "main": distributed.is_main_process(), "in_group": distributed.is_distributed()}
    seen["gathered"] = distributed.all_gather_objects({"rank": rank, "items": list(range(rank + 2))})
    seen["concatenated"] = distributed.concatenate_on_main([f"rank{rank}"] * (rank + 2))
    seen["union"] = distributed.all_gather_dict({f"image{rank}": rank, f"image{rank + 2}": [rank] * 2})
    seen["from_0"] = distributed.broadcast_object(f"made by rank {rank}")
    seen["from_1"] = distributed.broadcast_object([rank, "x"], src=1)
    seen["mean"] = distributed.reduce_mean({"loss": 1.0 + rank, "other": 10.0 * rank}, torch.device("cpu"))
    calls = []
    seen["computed"] = distributed.on_main_process(lambda: calls.append(rank) or 40 + rank)
    seen["computed_here"] = calls

    def refuse():
        raise BadKey("configs/x.yaml: unknown key 'solver.base_rl' (did you mean solver.base_lr?)")

    try:
        distributed.on_main_process(refuse)
        seen["error"] = None
    except UserError as error:
        seen["error"] = [type(error).__name__, str(error)]
    messages = []
    for ims_per_batch in (1, 3):
        try:
            distributed.check_batch_divides(ims_per_batch)
        except UserError as error:
            messages.append(str(error))
    seen["divides"] = [distributed.check_batch_divides(8), messages]
    distributed.barrier()
    distributed.leave_process_group()
    seen["in_group_after_leaving"] = distributed.is_distributed()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(seen, handle)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ranks"))
    mp.spawn(rank_worker, args=(2, free_port(), out_dir), nprocs=2, join=True)
    return [json.loads(open(os.path.join(out_dir, f"rank{r}.json"), encoding="utf-8").read()) for r in range(2)]


def test_ranks_join_the_group_that_torchrun_describes(two_ranks):
    assert [(s["rank"], s["world"], s["main"], s["in_group"]) for s in two_ranks] == [(0, 2, True, True),
                                                                                       (1, 2, False, True)]
    assert [s["in_group_after_leaving"] for s in two_ranks] == [False, False]


def test_gather_broadcast_and_mean(two_ranks):
    expected = [{"rank": 0, "items": [0, 1]}, {"rank": 1, "items": [0, 1, 2]}]
    for seen in two_ranks:
        assert seen["gathered"] == expected  # in rank order, on every rank
        assert seen["union"] == {"image0": 0, "image2": [0, 0], "image1": 1, "image3": [1, 1]}
        assert seen["from_0"] == "made by rank 0"
        assert seen["from_1"] == [1, "x"]
        assert seen["mean"] == {"loss": 1.5, "other": 5.0}
    # Concatenated in rank order on the main process alone.
    assert [s["concatenated"] for s in two_ranks] == [["rank0"] * 2 + ["rank1"] * 3, []]


def test_main_process_computes_once_and_a_user_error_reaches_every_rank(two_ranks):
    assert [s["computed"] for s in two_ranks] == [40, 40]
    assert [s["computed_here"] for s in two_ranks] == [[0], []]
    message = "configs/x.yaml: unknown key 'solver.base_rl' (did you mean solver.base_lr?)"
    assert [s["error"] for s in two_ranks] == [["BadKey", message]] * 2


def test_batch_split_messages_on_two_ranks(two_ranks):
    for seen in two_ranks:
        assert seen["divides"] == [4, [
            "solver.ims_per_batch=1 is smaller than the 2 processes: lower --nproc_per_node or raise "
            "solver.ims_per_batch",
            "solver.ims_per_batch=3 is not divisible by the 2 processes: use a multiple of 2"]]


# -- one process, no group -------------------------------------------------------------------------------


def test_without_a_group_every_helper_is_the_identity():
    assert not distributed.is_distributed()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)
    payload = {"a": [1, 2]}
    assert distributed.all_gather_objects(payload) == [payload]
    assert distributed.all_gather_dict(payload) == payload
    assert distributed.concatenate_on_main([1, 2]) == [1, 2]
    assert distributed.broadcast_object(payload) is payload
    assert distributed.reduce_mean({"loss": 2.5}, torch.device("cpu")) == {"loss": 2.5}
    assert distributed.on_main_process(lambda: 7) == 7
    with pytest.raises(BadKey, match="^bad$"):
        distributed.on_main_process(lambda: (_ for _ in ()).throw(BadKey("bad")))
    distributed.barrier()
    distributed.leave_process_group()


@pytest.mark.parametrize("world, ims_per_batch, result", [
    ("1", 3, 3),
    ("4", 8, 2),
    ("4", 6, "test.ims_per_batch=6 is not divisible by the 4 processes: use a multiple of 4"),
    ("4", 2, "test.ims_per_batch=2 is smaller than the 4 processes: lower --nproc_per_node or raise "
             "test.ims_per_batch"),
])
def test_batch_split_reads_torchruns_world_size(monkeypatch, world, ims_per_batch, result):
    """Checked before the group exists: the world size comes from torchrun's WORLD_SIZE."""
    monkeypatch.setenv("WORLD_SIZE", world)
    if isinstance(result, int):
        assert distributed.check_batch_divides(ims_per_batch, "test.ims_per_batch") == result
    else:
        with pytest.raises(UserError) as error:
            distributed.check_batch_divides(ims_per_batch, "test.ims_per_batch")
        assert str(error.value) == result


@pytest.mark.parametrize("env, launched", [({}, False), ({"RANK": "0"}, False), ({"WORLD_SIZE": "2"}, False),
                                           ({"RANK": "0", "WORLD_SIZE": "1"}, False),
                                           ({"RANK": "1", "WORLD_SIZE": "2"}, True)])
def test_launched_by_torchrun_needs_rank_and_more_than_one_process(monkeypatch, env, launched):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched_by_torchrun() is launched


def test_init_without_torchrun_is_a_no_op(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    distributed.init_distributed(torch.device("cpu"))
    assert not distributed.is_distributed()


def test_device_choice(monkeypatch):
    assert distributed.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.select_device("auto") == torch.device("cpu")
    with pytest.raises(UserError) as error:
        distributed.select_device("cuda")
    assert str(error.value) == "device=cuda but no CUDA device is available (set device=cpu or device=auto)"
