"""GRPOJobs on the real control plane: make, apply, wait for, end pods, delete.

Shared by the cluster tests (tests/cluster/); imports ``controlplane``, which
tests/cluster/conftest.py puts on sys.path.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import yaml
from controlplane import EXIT_ANNOTATION, ControlPlane, wait_until

from grpo_operator.api import GROUP, PLURAL, VERSION
from grpo_operator.children import JOB_LABEL, TRAINER
from support.checkout import checkout_env
from support.jobdocs import ROOT, load_example

CHART = ROOT / "charts" / "grpo-operator"
CRD_FILE = CHART / "files" / "crd.yaml"
POOL_CRD_FILE = CHART / "files" / "crd-pool.yaml"
CRD_NAME = "grpojobs.grpo.dev"
POOL_CRD_NAME = "grpoinferencepools.grpo.dev"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
SECRET = "openai-api-key"  # the example's untrusted-model and judge Secret
CHILD_KINDS = "pods,services,configmaps,persistentvolumeclaims"

Job = dict[str, Any]


def job_manifest(name: str = "papillon", **spec_changes: Any) -> Job:
    """The example job named ``name``; a mapping merges into the spec's mapping of that key, anything else replaces."""
    doc = copy.deepcopy(load_example())
    doc["metadata"]["name"] = name
    for key, value in spec_changes.items():
        if isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key].update(value)
        else:
            doc["spec"][key] = value
    return doc


POOL_MODEL = {"name": "Qwen/Qwen2.5-1.5B-Instruct"}  # the example job's


def pool_manifest(name: str = "shared", **spec: Any) -> dict[str, Any]:
    """A GRPOInferencePool of the example job's model (``spec`` replaces its fields)."""
    return {
        "apiVersion": "grpo.dev/v1alpha1",
        "kind": "GRPOInferencePool",
        "metadata": {"name": name},
        # two jobs' slots; ReadWriteMany: the trainers may spread over the fake nodes
        "spec": {"model": POOL_MODEL, "maxLoras": 4, "maxCpuLoras": 8, "storage": {"accessMode": "ReadWriteMany"}, **spec},
    }


def on_pool(name: str, pool: str = "shared", **spec: Any) -> dict[str, Any]:
    """The example job on ``pool``, with one training GPU (three jobs fit the two fake nodes)."""
    doc = job_manifest(name, **spec)
    doc["spec"]["inference"] = {"pool": pool}
    doc["spec"]["trainKwargs"]["num_training_gpus"] = 1
    return doc


def create_job(cp: ControlPlane, ns: str, doc: Job, dry_run: bool = False) -> tuple[int, Any]:
    """POST a job as the admin (``dry_run``: through admission, storing nothing): (HTTP status, body)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}" + ("?dryRun=All" if dry_run else "")
    return cp.request("POST", path, doc)


def wait_refused(cp: ControlPlane, ns: str, doc: Job, timeout: float = 15) -> dict[str, Any]:
    """The Status of a dry-run create of ``doc``, once the API server refuses it. The API server loads an admission
    policy (and the params it reads) through informers, a moment after it is created: a job it must refuse is
    tried, storing nothing, until it is."""

    def refused() -> Optional[dict[str, Any]]:
        status, body = create_job(cp, ns, doc, dry_run=True)
        return body if status != 201 else None

    return wait_until(refused, timeout=timeout, what=f"the API server to refuse job {doc['metadata']['name']!r}")


def install_crd(cp: ControlPlane) -> str:
    """Apply the generated CRDs (GRPOJob, GRPOInferencePool) and wait until they are Established; returns the
    GRPOJob CRD's name."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE), "-f", str(POOL_CRD_FILE))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}", f"crd/{POOL_CRD_NAME}")
    return CRD_NAME


def apply_jobs(cp: ControlPlane, ns: str, *docs: Job, secret: bool = True) -> None:
    """The example's Secret (unless ``secret=False``), then the jobs."""
    if secret:
        cp.kubectl("create", "secret", "generic", SECRET, "--from-literal=api-key=sk-test", "-n", ns)
    cp.apply_yaml(yaml.safe_dump_all(docs), ns)


def get_job(cp: ControlPlane, ns: str, name: str) -> Job:
    return cp.get_json("grpojob", name, namespace=ns)


def cond(job: Job, ctype: str) -> dict[str, Any]:
    """The job's condition of that type, ``{}`` when it has none."""
    return next((c for c in job.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def is_true(ctype: str) -> Callable[[Job], bool]:
    return lambda job: cond(job, ctype).get("status") == "True"


def wait_job(cp: ControlPlane, ns: str, name: str, pred: Callable[[Job], Any], what: str, timeout: float = 30) -> Job:
    """Poll the job until ``pred`` holds; on timeout, say which conditions it had last.

    A job that has failed (Failed=True, terminal) while ``pred`` does not hold ends the wait at
    once: a broken run fails the test in seconds, not after the whole timeout of a slow test.
    """
    last: Job = {}
    failed: list[dict[str, Any]] = []

    def check() -> Job | None:
        last.clear()
        last.update(get_job(cp, ns, name))
        if pred(last):
            return last
        failed[:] = [c for c in last.get("status", {}).get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"]
        return last if failed else None

    try:
        job = wait_until(check, timeout=timeout, interval=0.3, what=f"{name} {what}")
        if failed:
            raise AssertionError(f"{name} failed while waiting for {what}: {failed[0].get('reason')}: {failed[0].get('message')}")
        return job
    except TimeoutError as exc:
        conditions = [
            (c["type"], c["status"], c["reason"], c.get("message"))
            for c in last.get("status", {}).get("conditions", [])
        ]
        raise TimeoutError(f"{exc}; last conditions: {conditions}") from None


def exit_running_pod(cp: ControlPlane, ns: str, pod: str, code: int) -> None:
    """Once the pod runs, make KWOK end it with this exit code."""
    cp.wait_for_pod_phase(ns, pod, "Running", timeout=30)
    cp.kubectl("annotate", "pod", pod, f"{EXIT_ANNOTATION}={code}", "-n", ns)


def job_exists(cp: ControlPlane, ns: str, name: str) -> bool:
    return cp.kubectl("get", "grpojob", name, "-n", ns, check=False).returncode == 0


def team_member(cp: ControlPlane, ns: str, name: str = "alice") -> Path:
    """A kubeconfig of a team member who holds the built-in ``edit`` role in the namespace (the chart
    aggregates GRPOJob rights into it): what a notebook's compile() and the grpo CLI run as."""
    path = cp.kubeconfig_for_serviceaccount(ns, name)
    cp.kubectl("create", "rolebinding", f"{name}-edit", "--clusterrole=edit", f"--serviceaccount={ns}:{name}", "-n", ns)
    return path


def grpo_command(kubeconfig: Path, *args: str) -> list[str]:
    """The ``grpo`` CLI as a user runs it, with their kubeconfig."""
    return [sys.executable, "-m", "grpo_operator.client.cli", *args, "--kubeconfig", str(kubeconfig)]


def grpo(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = grpo_command(kubeconfig, *args)
    return subprocess.run(command, env=checkout_env(), capture_output=True, text=True, timeout=timeout)


def pods(cp: ControlPlane, ns: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in cp.get_json("pods", namespace=ns)["items"]}


def children(cp: ControlPlane, ns: str) -> list[str]:
    """``Kind/name`` of every pod, Service, ConfigMap (but the namespace's CA bundle) and claim in ``ns``."""
    items = cp.get_json(CHILD_KINDS, namespace=ns)["items"]
    return sorted(
        f"{i['kind']}/{i['metadata']['name']}"
        for i in items
        if i["kind"] != "ConfigMap" or i["metadata"]["name"] != "kube-root-ca.crt"
    )


def events(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    return cp.get_json("events", namespace=ns)["items"]


def wait_event(
    cp: ControlPlane,
    ns: str,
    reason: str,
    *,
    type: Optional[str] = None,
    name: Optional[str] = None,
    kind: Optional[str] = None,
    timeout: float = 20,
) -> list[dict[str, Any]]:
    """The events of ``reason`` in ``ns`` (of that type, about that object), waited for until there is one.

    The operator posts a transition's events after the status patch that records it, so a test that has
    just seen the status may read the events a moment before they are there.
    """

    def matching() -> list[dict[str, Any]]:
        return [
            e
            for e in events(cp, ns)
            if e["reason"] == reason
            and type in (None, e["type"])
            and name in (None, e["involvedObject"].get("name"))
            and kind in (None, e["involvedObject"].get("kind"))
        ]

    return wait_until(matching, timeout=timeout, what=f"event {reason} in {ns}")


def trainer_of_ip(cp: ControlPlane, ns: str) -> Callable[[str], Optional[str]]:
    """ip -> the job whose trainer pod in ``ns`` has that IP (None: no such pod), for support.fake_trainer."""

    def job_of(ip: str) -> Optional[str]:
        for pod in cp.get_json("pods", "-l", f"app.kubernetes.io/component={TRAINER}", namespace=ns)["items"]:
            if pod.get("status", {}).get("podIP") == ip:
                return pod["metadata"]["labels"][JOB_LABEL]
        return None

    return job_of
