"""What a reconcile reads from the API server: a finished job reads its pods (and a kept volume) only.

A recording stand-in for the API server (no real one is needed to count calls); the real
calls are exercised by the cluster tests."""

from __future__ import annotations

import copy
from typing import Any

from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.controller.reconcile import Reconciler
from grpo_operator.settings import OperatorSettings
from support.jobdocs import load_example


class RecordingCluster:
    def __init__(self) -> None:
        self.reads: list[str] = []

    def read(self, kind: str, namespace: str, name: str) -> None:
        self.reads.append(kind)

    def secret_keys(self, namespace: str, name: str) -> set[str]:
        self.reads.append("Secret")
        return {"api-key"}

    def job_pods(self, namespace: str, job: str, uid: str) -> list[dict[str, Any]]:
        self.reads.append("Pods")
        return []


def job(*, finished: bool, retain: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(load_example())
    doc["metadata"].update(namespace="ns", uid="uid-1")
    doc["spec"]["storage"]["retainOnDelete"] = retain
    if finished:
        doc["status"] = {"conditions": [{"type": "Succeeded", "status": "True", "reason": "TrainerSucceeded",
                                         "lastTransitionTime": "2026-11-25T12:00:00Z"}]}  # fmt: skip
    return doc


def reads(body: dict[str, Any]) -> list[str]:
    cluster = RecordingCluster()
    Reconciler(cluster, OperatorSettings(), OperatorMetrics()).observe(body)  # type: ignore[arg-type]
    return sorted(cluster.reads)


def test_a_running_job_checks_its_children_and_references():
    assert {"ConfigMap", "PersistentVolumeClaim", "Pods", "Secret", "Service"} <= set(reads(job(finished=False)))


def test_a_finished_job_reads_only_its_pods_and_a_volume_it_may_still_release():
    assert reads(job(finished=True)) == ["Pods"]
    assert reads(job(finished=True, retain=True)) == ["PersistentVolumeClaim", "Pods"]
