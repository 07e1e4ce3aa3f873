"""Data-parallel context from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

One process per training GPU (nccl) or per CPU worker (gloo), started by
:mod:`grpo_trainer.run.launch` (or torchrun). Without WORLD_SIZE the trainer is a
single process and every collective here is a no-op, so the same code runs under
the launcher, in the local runner and in tests.

Collectives time out after ``train_kwargs.ddp_timeout``. The long waits of the
other ranks on the main one (vLLM starting, the baseline validation, a step's
rollouts) are not collectives: :func:`wait_for_main` waits on the group's store
without that limit, so a slow cold start cannot trip the collective watchdog.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional, TypeVar

import torch
import torch.distributed as torch_dist

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long the other ranks wait for the main rank at a step boundary: no practical limit.
# If the main rank dies instead, the launcher ends the others at once.
MAIN_RANK_WAIT = timedelta(days=7)


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    store: Optional[torch_dist.Store] = None  # the group's key-value store (distributed runs only)
    grouped: bool = False  # in a process group although the only rank (init_distributed(group_of_one=True))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether collectives go through a process group (more than one rank, or a group of one)."""
        return self.world_size > 1 or self.grouped


def init_distributed(
    device: str = "auto", timeout_seconds: float = 1800.0, *, group_of_one: bool = False
) -> DistContext:
    """Join the process group the launcher (or torchrun) describes, or return a single-process context.

    ``device``: "auto" (cuda if available), "cpu" or "cuda". GPUs use nccl with
    cuda:LOCAL_RANK; CPU uses gloo. ``group_of_one``: join a group under the
    launcher even with WORLD_SIZE=1 (the trainer never does; bench/gpu_check.py
    does, to run nccl's collectives on a one-GPU machine).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "the job asks for training GPUs (trainKwargs.num_training_gpus) but torch sees no CUDA device: "
            f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, which needs an NVIDIA driver that "
            "supports it (CUDA 13: driver >= 580; see the README's GPU requirements for images built for CUDA 12), "
            "the NVIDIA container runtime and the device plugin on the node"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size <= 1 and not (group_of_one and "MASTER_PORT" in os.environ):
        return DistContext(device=dev)
    timeout = timedelta(seconds=timeout_seconds)
    # Under the launcher (and torchrun) the store is the launcher's own; every rank is its client.
    hosts_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=hosts_store, timeout=timeout
    )
    # The main rank joins after checking the job's task (grpo_trainer.run.main): the others wait for
    # it here, on the store, not in the group's rendezvous below, which ``timeout`` bounds.
    _meet_main(store, rank, "join")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=torch_dist.PrefixStore("process-group", store),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
        )
    log.info("joined process group", extra={"rank": rank, "world_size": world_size, "device": str(dev)})
    return DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=dev, store=store, grouped=world_size == 1
    )


def wait_for_main(ctx: DistContext, point: str) -> None:
    """All ranks call this at the same point: the main rank marks it reached, the others wait until it has.

    Called before a collective the main rank may reach much later than the others
    (it alone talks to vLLM), so their wait is on the store, not in the collective.
    """
    if not ctx.is_distributed or ctx.store is None:
        return
    _meet_main(ctx.store, ctx.rank, point)


def _meet_main(store: torch_dist.Store, rank: int, point: str) -> None:
    key = f"main-reached/{point}"
    if rank == 0:
        store.set(key, "1")
    else:
        store.wait([key], MAIN_RANK_WAIT)


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
