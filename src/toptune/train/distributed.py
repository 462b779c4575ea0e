"""Several processes, one job: the few collectives training needs, and a no-op in one process.

``torchrun --nproc-per-node N …`` starts N copies of the same program with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` in their environment. :func:`init` joins them into one process group: gloo for
CPU tensors and Python objects, and NCCL for CUDA tensors when CUDA is present (each process on
``cuda:LOCAL_RANK``). Every function here also works without ``torchrun`` (world 1, rank 0), where it
does nothing, so the library calls them unconditionally; a collective joins the group first if
nothing has yet.

Rank and world come from the environment until the group exists, so code that runs before it (the
Kedro settings deciding which process talks to MLflow) agrees with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from toptune.config import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def world() -> int:
    """Number of processes in the job (1 without ``torchrun``)."""
    return dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's index in the job, 0 … world-1 (0 without ``torchrun``)."""
    return dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    """This process's index on its machine (its CUDA device)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this is rank 0: the one process that logs, tracks and writes files."""
    return rank() == 0


def init() -> bool:
    """Join the job's process group when started by ``torchrun`` with more than one process; idempotent.
    Returns whether a group is active. gloo carries CPU tensors and objects, NCCL CUDA tensors."""
    if dist.is_initialized():
        return True
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    log.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def shutdown() -> None:
    """Leave the process group (at the end of a job), if one is active."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here."""
    if world() > 1 and init():
        dist.barrier()


def in_turn(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first, then on the first process of every other machine, then on the rest, with a
    barrier after each turn; returns this process's result. For work that writes a shared result (a cache,
    a checkpoint written on first use): rank 0 writes it; on a filesystem every machine sees, the others
    find it done; on a machine-local disk, each machine's first process writes that machine's copy.
    Every process must call it at the same point. In one process: just ``fn()``."""
    turn = 0 if is_main() else 1 if local_rank() == 0 else 2
    result: list[T] = []
    for t in range(3 if world() > 1 else 1):
        if t == turn:
            result.append(fn())
        barrier()
    return result[0]


def all_reduce_sum_(tensors: Sequence[Tensor]) -> None:
    """Sum ``tensors`` over all processes, in place, with one collective (flattened into one buffer)."""
    if world() <= 1 or not tensors:
        return
    init()
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def reduce_gradients(params: Sequence[torch.nn.Parameter], losses: Sequence[Tensor]) -> Tensor:
    """Sum the parameters' gradients and the micro-batches' loss parts over the processes, in one
    collective, and return the summed losses (micro-batches,) on the device, unread: reading them
    waits for the device, which the loop does once per log interval. A process whose share of a
    batch was empty has no gradient: it contributes zeros. In one process: the losses stacked."""
    packed = torch.stack(list(losses))  # (micro-batches,)
    if world() <= 1:
        return packed
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    packed = packed.to(grads[0].device)
    all_reduce_sum_([*grads, packed])
    return packed


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if world() <= 1:
        return [obj]
    init()
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if world() <= 1:
        return obj
    init()
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_divides(batch_size: int, name: str = "training.batch_size") -> None:
    """The global batch must split evenly over the processes."""
    if batch_size % world():
        raise ConfigError(
            f"{name}={batch_size} does not divide by the {world()} processes of this job "
            f"(it is the global batch: each process takes {name} / {world()} examples)"
        )


def share(idx: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch of example indices (``np.array_split``: equal
    shares when the batch divides, else the first ones one longer; possibly empty for a short batch)."""
    if world() <= 1:
        return idx
    return np.array_split(idx, world())[rank()]


def owns(i: int) -> bool:
    """Whether this process handles whole batch ``i`` of an evaluation pass (round robin)."""
    return i % world() == rank()
