"""torch.distributed helpers for data-parallel training launched by ``torchrun``.

``torchrun --nproc_per_node=N script.py`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; :func:`init_from_env` turns them into a process group (``nccl`` on CUDA, ``gloo`` on
CPU). Without those variables everything here is a single-process no-op, so the same script runs
with ``python script.py`` and with ``torchrun``.

The trainer splits every global batch across ranks: rank r takes its contiguous slice of the
SAME global index batch, and DDP averages the gradients, so one step equals the single-process
step with the global batch (up to float summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int  # global rank of this process
    world_size: int  # number of processes
    local_rank: int  # rank on this machine (selects the CUDA device)
    device: torch.device  # the device this process trains on


def init_from_env(backend: Optional[str] = None) -> DistEnv:
    """Join the process group described by torchrun's environment variables (if any).

    Args:
        backend: None picks ``nccl`` when CUDA is available and ``gloo`` otherwise.

    Returns the rank, world size, local rank and device of this process. With WORLD_SIZE unset or
    1 no process group is created. Call once, at the entry point (it sets the CUDA device).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and not is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (the process that logs and writes checkpoints)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over all ranks (a new tensor; ``t`` itself on one process)."""
    if world_size() == 1:
        return t
    out = t.detach().to(_comm_device(t), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / world_size()).to(t.device)


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """``[t of rank 0, t of rank 1, ...]`` (same shape and dtype on every rank required)."""
    if world_size() == 1:
        return [t]
    src = t.detach().to(_comm_device(t)).contiguous()
    out = [torch.empty_like(src) for _ in range(world_size())]
    dist.all_gather(out, src)
    return [o.to(t.device) for o in out]


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (so that all ranks stop at the same step)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    t = t.to(_comm_device(t))
    dist.broadcast(t, src=0)
    return bool(t.item())


def destroy() -> None:
    """Leave the process group (call at the end of a torchrun script)."""
    if is_initialized():
        dist.destroy_process_group()
