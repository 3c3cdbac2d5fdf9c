"""Join (or reuse) the learner's process group from plain arguments, so a Ray actor can construct a Learner."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def join(rank: int, world_size: int, master_addr: str, master_port: int, device: str, timeout_s: int) -> None:
    """Initialise the default process group (gloo on CPU, NCCL on CUDA) unless this process already has one.

    A process keeps one group for its lifetime; a second Learner in the same process (tests, restore)
    reuses it, which is only valid with the same rank and world size.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    # DeepSpeed reads these even when handed an initialised group.
    local_rank = rank % max(1, torch.cuda.device_count()) if device == "cuda" else 0
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(
                f"this process already belongs to a process group as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}; cannot become rank {rank} of {world_size}"
            )
        return
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo",
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor); identity without a process group. bond.objective's `all_reduce_sum`."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def rank_means(device: torch.device, **values: float) -> dict[str, float]:
    """Each statistic's mean over the ranks (equal shares: the mean of the rank means is the global mean)."""
    local = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return dict(zip(values, (all_reduce_sum(local) / world_size).tolist(), strict=True))


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
