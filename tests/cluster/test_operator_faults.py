"""Faults of the operator itself on the real control plane (issue #19: items 5 and 12, the fault runs).

* two operators writing one job's status (the overlap of an eviction under ``Recreate``):
  the stale one's write is refused and it decides again, so no counter goes back;
* the operator SIGKILLed at random points during a run of many jobs: every job finishes,
  no pod is made twice or left behind, no child is orphaned;
* hostile trainers' /progress (huge, trickling, silent, not JSON, overflowing, deep): healthy
  jobs are still reconciled on time, /healthz stays green; an API server that hangs wedges
  the reconcile workers, and /healthz turns red until it answers again.

Fakes, and why: KWOK nodes stand in for GPU nodes and the test ends their pods (no GPU, no image
runs here); the trainers' /progress is support/fake_trainer.py's server (no trainer runs on a fake
node). ``bash bench/run.sh operator_faults`` runs the same two runs longer (bench/RESULTS.md).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from controlplane import ControlPlane, wait_until
from prometheus_client import generate_latest

from grpo_operator.controller.kube import Cluster
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.controller.reconcile import Reconciler
from grpo_operator.settings import OperatorSettings
from support.cluster_jobs import (
    apply_jobs,
    exit_running_pod,
    get_job,
    is_true,
    job_manifest,
    pods,
    trainer_of_ip,
    wait_job,
)
from support.fake_trainer import FakeTrainers
from support.latency import DelayProxy, upstream_of
from support.operator import OperatorProcess, free_port, start_operator
from support.operator_faults import api_client, drop_node_pool, fault_jobs, hostile_run, kill_run, node_pool

pytestmark = pytest.mark.cluster


# --------------------------------------------------------------------------- two writers


class PausedCluster(Cluster):
    """An operator that stalls between its decision and its status write, once (a stale operator)."""

    def __init__(self, api: Any) -> None:
        super().__init__(api)
        self.decided = threading.Event()
        self.go_on = threading.Event()

    def patch_status(self, namespace: str, name: str, status: Any, *version: Optional[str]) -> Optional[str]:
        if not self.decided.is_set():
            self.decided.set()
            assert self.go_on.wait(60)
        return super().patch_status(namespace, name, status, *version)


def test_a_stale_operators_status_write_is_refused_and_it_decides_again(control_plane: ControlPlane, grpojob_crd: str,
                                                                           job_ns: str):  # fmt: skip
    """Two reconcilers of one job against the real API server: one reads the job with trainer-0 failed and
    decides restart 1, then stalls; meanwhile the other restarts the job twice. The stale write must not
    take restarts back from 2 to 1, nor bring back trainer-1."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest(runPolicy={"backoffLimit": 3}))
    settings = OperatorSettings(trainer_port=free_port())
    live = Reconciler(Cluster(api_client(cp)), settings, OperatorMetrics())
    stale_cluster = PausedCluster(api_client(cp))
    stale = Reconciler(stale_cluster, settings, OperatorMetrics())

    def restart(attempt: int) -> None:
        """The live operator's reconciles until trainer-<attempt> runs; then it fails."""
        name = f"papillon-trainer-{attempt}"
        wait_until(lambda: live.reconcile_named(ns, "papillon") and name in pods(cp, ns), timeout=30, what=name)
        exit_running_pod(cp, ns, name, 1)
        cp.wait_for_pod_phase(ns, name, "Failed", timeout=30)

    restart(0)
    stale_run = threading.Thread(target=stale.reconcile_named, args=(ns, "papillon"))
    stale_run.start()
    assert stale_cluster.decided.wait(30)  # read restarts 0 and a failed trainer-0: decided restart 1
    restart(1)  # the live operator: restart 1 (trainer-1), which fails too
    live.reconcile_named(ns, "papillon")  # restart 2: trainer-2, trainer-1 deleted
    wait_until(lambda: "papillon-trainer-1" not in pods(cp, ns), timeout=30, what="trainer-1 deleted")
    assert get_job(cp, ns, "papillon")["status"]["restarts"] == 2

    stale_cluster.go_on.set()
    stale_run.join(60)
    job = get_job(cp, ns, "papillon")
    assert job["status"]["restarts"] == 2 and job["status"]["trainerPod"] == "papillon-trainer-2"
    assert "papillon-trainer-1" not in pods(cp, ns), "the stale decision recreated trainer-1"
    assert "grpo_operator_status_conflicts_total 1.0" in generate_latest(stale.metrics.registry).decode()


# --------------------------------------------------------------------------- the operator killed


def test_operator_killed_at_random_points_during_many_jobs_leaves_no_duplicate_or_orphaned_children(
    control_plane: ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
):
    cp, ns = control_plane, job_ns
    pool = node_pool(cp, f"kill-{ns[-5:]}", nodes=1, gpus=32)
    proc = start_operator(cp, operator_kubeconfig, ns, tmp_path / "operator.log")
    trainers = FakeTrainers(int(proc.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    try:
        docs = fault_jobs([f"job-{i}" for i in range(6)], pool, backoff_limit=3)
        # trainers end over the whole run (up to 3 attempts of up to 6 s each), so the kills meet work to do
        run = kill_run(cp, proc, trainers, ns, docs, kills=8, rng=random.Random(19), exit_after=(0.5, 6.0),
                       timeout=240)  # fmt: skip
        print(run.summary())
        assert not run.problems, "\n".join(run.problems)
        assert sum(run.failures.values()) > 0  # the plan made the operator restart some trainers
    finally:
        trainers.close()
        proc.stop_and_check_log()
        drop_node_pool(cp, ns, pool)


# --------------------------------------------------------------------------- hostile /progress, liveness

HOSTILE = {"trickle-1": "trickle", "trickle-2": "trickle", "trickle-3": "trickle", "silent-1": "silent",
           "silent-2": "silent", "huge": "huge", "garbage": "garbage", "overflowing": "overflowing",
           "deep": "deep"}  # fmt: skip
HEALTHY = ["healthy-1", "healthy-2"]
PROGRESS_TIMEOUT = 2.0  # a trickling reply holds its reader 2 x this long
STALL = 5.0  # the liveness limit of this test's operator


@pytest.fixture
def proxied_operator(
    control_plane: ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, DelayProxy]]:
    """The operator with two reconcile workers (fewer than the hostile trainers), talking to the API
    server through a proxy the test can make hang."""
    proxy = DelayProxy(upstream_of(operator_kubeconfig), delay=0.0)
    kubeconfig = proxy.kubeconfig(operator_kubeconfig, tmp_path / "proxied.kubeconfig")
    settings = {"GRPO_RECONCILE_WORKERS": "2", "GRPO_PROGRESS_TIMEOUT_SECONDS": str(PROGRESS_TIMEOUT),
                "GRPO_LIVENESS_STALL_SECONDS": str(STALL)}  # fmt: skip
    proc = start_operator(control_plane, kubeconfig, job_ns, tmp_path / "operator.log", settings)
    try:
        yield proc, proxy
    finally:
        proc.stop_and_check_log()
        proxy.close()


def test_hostile_progress_keeps_healthy_jobs_on_time_and_healthz_turns_red_only_when_workers_wedge(
    control_plane: ControlPlane, job_ns: str, proxied_operator: tuple[OperatorProcess, DelayProxy]
):
    cp, ns = control_plane, job_ns
    proc, proxy = proxied_operator
    time.sleep(STALL + 1)  # idle past the liveness limit ...
    assert proc.healthz()[0] == 200  # ... is not wedged
    pool = node_pool(cp, f"hostile-{ns[-5:]}", nodes=1, gpus=4 * (len(HOSTILE) + len(HEALTHY)))
    trainers = FakeTrainers(int(proc.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    try:
        apply_jobs(cp, ns, *fault_jobs([*HOSTILE, *HEALTHY], pool, backoff_limit=3))
        for name in [*HOSTILE, *HEALTHY]:
            wait_job(cp, ns, name, is_true("Training"), "Training=True", timeout=60)
        run = hostile_run(cp, proc, trainers, ns, HEALTHY, HOSTILE, rounds=5)
        print(run.summary())
        assert proc.alive and set(run.healthz) == {200}
        assert all(run.hostile_polls.values())
        # Two workers, and a trickling or silent trainer would hold one for 2 x 2 s at each poll: a reconcile
        # waiting behind those takes seconds; one that no poll can hold takes a fraction of one.
        ordered = sorted(run.reconcile_seconds)
        assert ordered[len(ordered) // 2] < 1.0 and ordered[-1] < PROGRESS_TIMEOUT, run.summary()
        assert max(run.progress_seconds) < 10.0, run.summary()  # the poll interval (1 s) plus the pool's queue

        # the API server hangs: every reconcile holds its worker; /healthz turns red, then green once it answers
        proxy.hold()
        try:
            code, body = wait_until(lambda: (h := proc.healthz())[0] == 503 and h, timeout=STALL + 30,
                                    what="/healthz red while the workers are wedged")  # fmt: skip
            assert any("work queue grpojobs" in p and "in hand" in p for p in body["problems"]), body
        finally:
            proxy.release()
        wait_until(lambda: proc.healthz()[0] == 200, timeout=60, what="/healthz green again")
        assert proc.alive
    finally:
        trainers.close()
        drop_node_pool(cp, ns, pool)
