"""One rank of bench/gpu_check.py's launcher check: join a process group through the trainer's own
code (nccl on cuda, gloo on cpu), run an all_reduce and a broadcast_object, leave, exit 0.

    python -m grpo_trainer.run.launch --nproc 1 bench/_gpu_check_worker.py --device cuda

Any failed assertion or collective exits non-zero, which the launcher reports as 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from grpo_trainer.run.distributed import all_reduce_sum, barrier, broadcast_object, init_distributed, shutdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    args = parser.parse_args()
    # group_of_one: a one-GPU machine has a single rank, which would otherwise skip the group.
    dist = init_distributed(args.device, timeout_seconds=120, group_of_one=True)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    if not dist.is_distributed or backend != ("nccl" if args.device == "cuda" else "gloo"):
        print(f"gpu_check_worker: no {args.device} process group (backend {backend})", file=sys.stderr)
        return 1
    total = all_reduce_sum(torch.tensor([float(dist.rank + 1)], device=dist.device), dist)
    expected = dist.world_size * (dist.world_size + 1) / 2
    sent = {"from_rank": dist.rank, "backend": backend} if dist.is_main else None
    received = broadcast_object(sent, dist)
    barrier(dist)
    ok = float(total.item()) == expected and received == {"from_rank": 0, "backend": backend}
    report = {"rank": dist.rank, "world_size": dist.world_size, "backend": backend, "device": str(dist.device)}
    report |= {"all_reduce": float(total.item()), "broadcast": received}
    print("gpu_check_worker " + ("ok " if ok else "MISMATCH ") + json.dumps(report), flush=True)
    shutdown(dist)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
