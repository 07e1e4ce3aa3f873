"""Data-parallel context from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

One process per training GPU (nccl) or per CPU worker (gloo). Without WORLD_SIZE
the trainer is a single process and every collective here is a no-op, so the same
code runs under torchrun, in the local runner and in tests.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_seconds: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes, or return a single-process context.

    ``device``: "auto" (cuda if available), "cpu" or "cuda". GPUs use nccl with
    cuda:LOCAL_RANK; CPU uses gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size <= 1:
        return DistContext(device=dev)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_seconds),
        )
    log.info("joined process group", extra={"rank": rank, "world_size": world_size, "device": str(dev)})
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """``src``'s object on every rank (the main rank makes the samples; the others receive them)."""
    if not ctx.is_distributed:
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    torch_dist.broadcast_object_list(box, src=src, device=ctx.device)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returned for chaining."""
    if ctx.is_distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        torch_dist.barrier()
