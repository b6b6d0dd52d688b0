"""torchrun / DistributedDataParallel helpers: process group set-up, rank queries and gathering."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def select_device(choice: str = "auto") -> torch.device:
    """The device of this process: its local GPU under torchrun, else GPU 0 or the CPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available (set device=cpu or device=auto)")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device, timeout_minutes: int = 30) -> None:
    """Join the process group that torchrun describes in the environment (NCCL on GPUs, gloo on CPUs)."""
    if not launched_by_torchrun() or is_distributed():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))


def check_batch_divides(ims_per_batch: int, key: str = "solver.ims_per_batch") -> int:
    """Images per process; a clear error when the global batch does not split evenly."""
    world = int(os.environ.get("WORLD_SIZE", get_world_size()))
    if ims_per_batch < world:
        raise UserError(f"{key}={ims_per_batch} is smaller than the {world} processes: lower --nproc_per_node "
                        f"or raise {key}")
    if ims_per_batch % world:
        raise UserError(f"{key}={ims_per_batch} is not divisible by the {world} processes: use a multiple of {world}")
    return ims_per_batch // world


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def concatenate_on_main(items: list) -> list:
    """Every process's list, concatenated in rank order on the main process; an empty list on the others.

    The main process receives one process's list at a time and extends its own with it, so it never
    holds more than the result and one received list (all_gather_objects would put every list on every
    process, pickled and unpickled at once)."""
    if not is_distributed():
        return list(items)
    if not is_main_process():
        dist.send_object_list([items], dst=0)
        return []
    merged = list(items)
    for rank in range(1, get_world_size()):
        holder = [None]
        dist.recv_object_list(holder, src=rank)
        merged.extend(holder.pop())
    return merged


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process ``src``'s buffers (BatchNorm's running statistics): with statistics kept per
    process, the others would evaluate a model that differs from the one ``src`` saves."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def on_main_process(compute):
    """``compute()`` on the main process, its result on every process; a user error it raises is
    raised on every process, so that none waits forever for the others."""
    outcome = None
    if is_main_process():
        try:
            outcome = compute()
        except UserError as error:
            outcome = error
    outcome = broadcast_object(outcome)
    if isinstance(outcome, UserError):
        raise outcome
    return outcome


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar values over processes (for logging)."""
    if not is_distributed() or not values:
        return values
    names = sorted(values)
    tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= get_world_size()
    return dict(zip(names, tensor.tolist()))


def all_gather_dict(part: dict) -> dict:
    """The union of every process's dict (each holds its own share of the keys)."""
    merged = {}
    for piece in all_gather_objects(part):
        merged.update(piece)
    return merged


def leave_process_group() -> None:
    """Leave the process group in step with the other processes. A process that exits with the group
    alive, or tears it down while a peer still talks to it, can be aborted by gloo ("terminate called
    without an active exception"), failing a run that succeeded. After an error the others may never
    arrive, and the teardown itself can abort: run_cli ends such a process without it."""
    if not is_distributed():
        return
    dist.barrier()
    dist.destroy_process_group()
