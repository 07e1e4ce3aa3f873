"""What a reconcile reads from the API server: a finished job reads its pods (and a kept volume) only;
Secrets only where the operator may read them, and a job elsewhere is told its references went unchecked.

A recording stand-in for the API server (no real one is needed to count calls); the real
calls are exercised by the cluster tests."""

from __future__ import annotations

import copy
from typing import Any

from grpo_operator.controller.kube import RETAINED_ANNOTATION
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.controller.reconcile import Reconciler
from grpo_operator.settings import OperatorSettings
from support.jobdocs import load_example


class RecordingCluster:
    def __init__(self, forbidden: tuple[str, ...] = ()) -> None:
        self.reads: list[str] = []
        self.forbidden = forbidden  # namespaces where RBAC refuses `get secrets`

    def read(self, kind: str, namespace: str, name: str) -> None:
        self.reads.append(kind)

    def secret_keys(self, namespace: str, name: str) -> set[str]:
        self.reads.append("Secret")
        if namespace in self.forbidden:
            raise PermissionError("secrets is forbidden")
        return {"api-key"}

    def job_pods(self, namespace: str, job: str, uid: str) -> list[dict[str, Any]]:
        self.reads.append("Pods")
        return []

    def get_pool(self, namespace: str, name: str) -> None:
        self.reads.append("GRPOInferencePool")


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


class KeptVolumeCluster(RecordingCluster):
    """... where every claim asked for is one an earlier job of the name kept (storage.retainOnDelete)."""

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        super().read(kind, namespace, name)
        if kind != "PersistentVolumeClaim":
            return None
        return {"metadata": {"name": name, "annotations": {RETAINED_ANNOTATION: "uid-0"}}}


def test_a_job_on_a_pool_reads_its_pool_and_no_volume_or_service_of_its_own():
    """Its run is in the pool's volume: a volume an earlier job of its name kept does not refuse it."""
    body = job(finished=False)
    body["spec"]["inference"] = {"pool": "shared"}
    cluster = KeptVolumeCluster()
    obs = Reconciler(cluster, OperatorSettings(), OperatorMetrics()).observe(body)  # type: ignore[arg-type]
    assert "GRPOInferencePool" in cluster.reads and not {"PersistentVolumeClaim", "Service"} & set(cluster.reads)
    assert not obs.retained_claim and not obs.missing
    del body["spec"]["inference"]  # the same job with a vLLM pod of its own is told about the kept volume
    assert Reconciler(KeptVolumeCluster(), OperatorSettings(), OperatorMetrics()).observe(body).retained_claim  # type: ignore[arg-type]


class CreatingCluster(RecordingCluster):
    """... that also takes creations: those of ``existing`` answer 409 (an earlier operator made them)."""

    def __init__(self, existing: set[str]) -> None:
        super().__init__()
        self.existing = existing
        self.created: list[str] = []

    def create(self, manifest: dict[str, Any]) -> bool:
        what = f"{manifest['kind']}/{manifest['metadata']['name']}"
        self.created.append(what)
        return what not in self.existing

    def patch_status(self, *args: Any) -> None:
        pass

    def post_event(self, *args: Any) -> None:
        pass


def test_the_jobs_key_secret_is_created_never_read_and_a_conflict_on_it_is_its_own():
    """The operator needs only `create` on Secrets: the key's name carries the job's uid, so a 409 (the
    operator restarted after making it) is this job's Secret; the pods go ahead, and the next reconcile
    does not try again."""
    key = "Secret/papillon-vllm-key-uid-1"
    cluster = CreatingCluster(existing={key})
    reconciler = Reconciler(cluster, OperatorSettings(), OperatorMetrics())  # type: ignore[arg-type]
    reconciler._reconcile(job(finished=False))
    assert key in cluster.created and "Pod/papillon-trainer-0" in cluster.created
    assert cluster.reads.count("Secret") == 1  # the user's referenced Secret (checkSecrets), not the key
    cluster.created.clear()
    reconciler._reconcile(job(finished=False))
    assert key not in cluster.created


def test_secrets_are_read_only_in_the_secret_namespaces_and_a_job_elsewhere_is_told():
    cluster = RecordingCluster()
    settings = OperatorSettings(secret_namespaces=("team-a",))
    reconciler = Reconciler(cluster, settings, OperatorMetrics())  # type: ignore[arg-type]
    obs = reconciler.observe(job(finished=False))  # in namespace "ns"
    assert "Secret" not in cluster.reads and obs.missing == ()
    assert "not checked" in obs.secrets_unchecked and "rbac.secretNamespaces" in obs.secrets_unchecked
    body = job(finished=False)
    body["metadata"]["namespace"] = "team-a"
    obs = reconciler.observe(body)
    assert "Secret" in cluster.reads and obs.secrets_unchecked == ""


def test_a_namespace_that_refuses_secrets_is_noted_and_not_asked_again_others_still_checked():
    cluster = RecordingCluster(forbidden=("ns",))
    reconciler = Reconciler(cluster, OperatorSettings(), OperatorMetrics())  # type: ignore[arg-type]
    first = reconciler.observe(job(finished=False))
    assert cluster.reads.count("Secret") == 1 and "may not get Secrets in namespace 'ns'" in first.secrets_unchecked
    again = reconciler.observe(job(finished=False))
    assert cluster.reads.count("Secret") == 1 and again.secrets_unchecked == first.secrets_unchecked
    other = job(finished=False)
    other["metadata"]["namespace"] = "team-b"
    assert reconciler.observe(other).secrets_unchecked == "" and cluster.reads.count("Secret") == 2
