"""The operator's fault runs, longer than CI's (tests/cluster/test_operator_faults.py).

On the test control plane (real etcd, kube-apiserver, kube-controller-manager, kube-scheduler;
KWOK fake GPU nodes; the operator as its own process, as in the e2e tests):

* kills: N GRPOJobs whose trainers fail 0-2 times each (KWOK ends each attempt 1-30 s after it
  runs) before one succeeds, while the operator is SIGKILLed K times, each at a random point
  0-3 s after it (re)started and answered /healthz (watching, resuming its jobs, reconciling);
  then every job must have finished with its attempts counted exactly, no pod made twice or
  left behind, no child without its job, no status counter or step that ever went back.
* hostile: H healthy jobs beside hostile trainers (every kind of support/fake_trainer.py's
  hostile replies, more trickling and silent ones than the operator has reconcile workers),
  the operator at its default 16 workers: how long a healthy job's spec change takes to be
  reconciled (status.observedGeneration) and its trainer's new step to reach the status.

The trainers are support/fake_trainer.py's /progress server (no trainer runs on a fake node).

    bash bench/run.sh operator_faults            # 30 jobs x 20 kills; 4 healthy + 36 hostile
    bash bench/run.sh operator_faults --quick    # 6 jobs x 5 kills; 2 healthy + 9 hostile
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))  # as tests/cluster/conftest.py

import controlplane  # noqa: E402
from _results import header, logs_dir, write_section  # noqa: E402

from support.cluster_jobs import apply_jobs, install_crd, is_true, trainer_of_ip, wait_job  # noqa: E402
from support.fake_trainer import HOSTILE, FakeTrainers  # noqa: E402
from support.operator import OperatorProcess, free_port, operator_env  # noqa: E402
from support.operator_faults import (  # noqa: E402
    HostileRun,
    KillRun,
    drop_node_pool,
    fault_jobs,
    hostile_run,
    kill_run,
    node_pool,
)

NAME = "operator_faults"
JOBS_PER_NODE = 8  # 32-GPU nodes, 4 GPUs a job on one node (ReadWriteOnce)
SLOW = ("trickle", "silent")  # the replies that hold a reader for a whole timeout or more


def nodes_for(jobs: int) -> int:
    """Room for every job at once, and one node to spare (the scheduler places pods one at a time)."""
    return math.ceil(jobs / JOBS_PER_NODE) + 1


def operator(cp: controlplane.ControlPlane, ns: str, log: Path, settings: dict[str, str]) -> OperatorProcess:
    env = {"GRPO_RESYNC_SECONDS": "2", "GRPO_PROGRESS_POLL_SECONDS": "1", "GRPO_TRAINER_PORT": str(free_port()),
           **settings}  # fmt: skip
    return OperatorProcess(operator_env(cp.env()), [ns], log, env).start()


def kills(cp: controlplane.ControlPlane, logs: Path, jobs: int, count: int, seed: int) -> KillRun:
    ns = cp.create_namespace(f"faults-kill-{seed}")
    pool = node_pool(cp, "faults-kill", nodes=nodes_for(jobs), gpus=32)
    proc = operator(cp, ns, logs / "kills-operator.log", {})
    trainers = FakeTrainers(int(proc.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    try:
        docs = fault_jobs([f"job-{i}" for i in range(jobs)], pool, backoff_limit=3)
        # trainers end over the whole run (up to 3 attempts of up to 30 s each), so the kills meet work to do
        return kill_run(cp, proc, trainers, ns, docs, kills=count, rng=random.Random(seed), exit_after=(1.0, 30.0),
                        timeout=1800)  # fmt: skip
    finally:
        trainers.close()
        proc.stop()
        drop_node_pool(cp, ns, pool)


def hostile(cp: controlplane.ControlPlane, logs: Path, healthy: int, per_kind: int, rounds: int) -> HostileRun:
    ns = cp.create_namespace("faults-hostile")
    names = {f"{kind}-{i}": kind for kind in HOSTILE for i in range(per_kind * (2 if kind in SLOW else 1))}
    fine = [f"healthy-{i}" for i in range(healthy)]
    pool = node_pool(cp, "faults-hostile", nodes=nodes_for(len(names) + healthy), gpus=32)
    proc = operator(cp, ns, logs / "hostile-operator.log", {})
    trainers = FakeTrainers(int(proc.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    try:
        apply_jobs(cp, ns, *fault_jobs([*names, *fine], pool, backoff_limit=3))
        for name in [*names, *fine]:
            wait_job(cp, ns, name, is_true("Training"), "Training=True", timeout=300)
        return hostile_run(cp, proc, trainers, ns, fine, names, rounds=rounds)
    finally:
        trainers.close()
        proc.stop()
        drop_node_pool(cp, ns, pool)


def report(killed: KillRun, hostile_: HostileRun, seed: int) -> str:
    problems = killed.problems
    lines = [
        "### The operator SIGKILLed at random points during a run of many jobs",
        "",
        killed.summary() + f" (seed {seed}).",
        "",
        "**" + ("every job finished; nothing duplicated, orphaned or left behind; no status went back"
                if not problems else f"{len(problems)} problems") + "**",  # fmt: skip
    ]
    lines += [f"- {p}" for p in problems[:20]]
    slow = sum(1 for kind in hostile_.hostile.values() if kind in SLOW)
    lines += [
        "",
        "### Hostile /progress replies",
        "",
        hostile_.summary() + ".",
        "",
        f"{slow} of the hostile trainers trickle or never answer, each holding whoever reads it for up to "
        "2 x the 2 s timeout: more than the operator's 16 reconcile workers. Their replies are read by the "
        "progress pool (4 threads; a trainer found slow is polled less often, on 2 threads of its own); the "
        "reconcile workers never wait for one. Timed from the first round after every hostile trainer had been "
        "read once; polls every 1 s, resync every 2 s.",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 6 jobs x 5 kills; 2 healthy + 9 hostile")
    p.add_argument("--jobs", type=int, default=30, help="jobs of the kill run")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the operator during the kill run")
    p.add_argument("--healthy", type=int, default=4, help="healthy jobs of the hostile run")
    p.add_argument("--per-kind", type=int, default=4, help="hostile jobs per kind of reply (twice for slow ones)")
    p.add_argument("--rounds", type=int, default=5, help="spec changes timed per healthy job")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--logs", type=Path, help="directory for component and operator logs (default: a temp dir)")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args()
    if args.quick:
        args.jobs, args.kills, args.healthy, args.per_kind, args.rounds = 6, 5, 2, 1, 3
    return args


def main() -> int:
    args = parse_args()
    logs = logs_dir(args.logs, NAME)
    started = time.monotonic()
    with controlplane.ControlPlane.start(logs_dir=logs) as cp:
        install_crd(cp)
        killed = kills(cp, logs, args.jobs, args.kills, args.seed)
        print(killed.summary(), file=sys.stderr)
        attacked = hostile(cp, logs, args.healthy, args.per_kind, args.rounds)
        print(attacked.summary(), file=sys.stderr)
    text = report(killed, attacked, args.seed)
    print(text)
    print(f"wall time {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not args.no_write:
        write_section(NAME, f"## Operator faults\n\n{header(NAME)}\n{text}\n")
    return 0 if not killed.problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
