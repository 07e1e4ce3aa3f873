"""Faults of the operator itself on the real control plane (issue #19).

* two operators writing one job's status (the overlap of an eviction under ``Recreate``):
  the stale one's write is refused and it decides again, so no counter goes back.

Fakes, and why: KWOK nodes stand in for GPU nodes and the test ends their pods (no GPU, no image
runs here).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import pytest
from controlplane import ControlPlane, wait_until
from kubernetes import config
from prometheus_client import generate_latest

from grpo_operator.controller.kube import Cluster
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.controller.reconcile import Reconciler
from grpo_operator.settings import OperatorSettings
from support.cluster_jobs import apply_jobs, exit_running_pod, get_job, job_manifest, pods
from support.operator import free_port

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
    live = Reconciler(Cluster(config.new_client_from_config(str(cp.kubeconfig))), settings, OperatorMetrics())
    stale_cluster = PausedCluster(config.new_client_from_config(str(cp.kubeconfig)))
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
