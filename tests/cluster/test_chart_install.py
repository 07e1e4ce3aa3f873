"""The platform team's path on the real control plane: helm install, then a job.

The chart is installed with the real helm; the operator then runs as a local
process (no image can run here) with the chart ServiceAccount's token and the
settings the chart put on its Deployment (env and args), so the chart's RBAC is
what is exercised. Job namespaces enforce Pod Security "restricted". KWOK nodes
stand in for GPU nodes (no GPU here); KWOK ends a pod when it is annotated
``grpo.test/exit``. The Argo CD health check (docs/argocd-health.lua) is run on
the live jobs' objects at each state. ``kubectl wait --for=condition=Succeeded``
is covered by test_operator_e2e.py.
"""

from __future__ import annotations

import copy
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until

from gitops.luahealth import evaluate
from support.chart import CRD, crd_exists, helm_install, start_operator_like_deployment
from support.cluster_jobs import (
    CHART,
    RESTRICTED,
    SECRET,
    apply_jobs,
    cond,
    exit_running_pod,
    get_job,
    is_true,
    job_manifest,
    wait_job,
)
from support.operator import OperatorProcess

pytestmark = pytest.mark.cluster


# --------------------------------------------------------------------------- helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def delete_jobs(cp: ControlPlane, ns: str) -> None:
    """Delete the namespace's jobs and their pods, and wait: a cluster-wide operator would otherwise
    keep reconciling them while the namespace terminates (where the API server forbids creating),
    and the next test's pods would find the fake GPUs still taken."""
    cp.kubectl("delete", "grpojobs", "--all", "-n", ns, "--wait=true", "--timeout=30s", check=False)
    cp.kubectl("delete", "pods", "--all", "-n", ns, "--wait=true", "--timeout=30s", check=False)  # GPUs free now


def can_i(cp: ControlPlane, who: str, *args: str) -> bool:
    return cp.kubectl("auth", "can-i", *args, "--as", who, check=False).stdout.strip() == "yes"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def job_ns(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace that enforces Pod Security "restricted"."""
    ns = control_plane.create_namespace(unique("jobs"), labels=RESTRICTED)
    yield ns
    delete_jobs(control_plane, ns)
    control_plane.delete_namespace(ns)


@pytest.fixture(scope="module")
def default_release(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """The chart installed with default values into a restricted namespace: (release, namespace)."""
    release, ns = "grpo", unique("grpo-system")
    control_plane.create_namespace(ns, labels=RESTRICTED)
    notes = helm_install(control_plane, release, ns)
    assert "It watches GRPOJobs in every namespace" in notes
    yield release, ns
    control_plane.helm("uninstall", release, "--namespace", ns, check=False)
    control_plane.delete_namespace(ns)


@pytest.fixture(scope="module")
def cluster_operator(
    control_plane: ControlPlane, default_release: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator of the default install: cluster-wide, as ServiceAccount grpo-grpo-operator."""
    _, ns = default_release
    log = tmp_path_factory.mktemp("chart-operator") / "operator.log"
    proc = start_operator_like_deployment(control_plane, ns, "grpo-grpo-operator", log)
    try:
        yield proc
    finally:
        proc.stop_and_check_log()


# --------------------------------------------------------------------------- tests
# The namespaced install runs first: the cluster-wide operator (module fixture,
# started by the next test) would otherwise also reconcile its jobs.


def test_namespace_mode_install_runs_a_job_with_roles_only(
    control_plane: ControlPlane, grpojob_crd: str, job_ns: str, tmp_path: Path
):
    """Two watched namespaces, Secrets readable in one (rbac.secretNamespaces): a job missing its Secret
    waits there, naming it; in the other it runs unchecked, and says so."""
    cp, release, release_ns = control_plane, "grpo-scoped", unique("grpo-scoped")
    cp.create_namespace(release_ns, labels=RESTRICTED)
    other_ns = cp.create_namespace(unique("unchecked"), labels=RESTRICTED)
    values = {
        "crds": {"install": False},  # the CRD is cluster-wide: owned by whoever installs it (grpojob_crd here)
        "watchNamespaces": [job_ns, other_ns],
        "serviceAccount": {"name": "grpo-scoped"},
        "rbac": {"secretNamespaces": [job_ns], "aggregateToDefaultRoles": False},  # nothing cluster-scoped
        "admissionPolicy": {"enabled": False},  # nor here
        "image": {"pullPolicy": "Always"},
        "jobDefaults": {"inferenceImage": "registry.example.com/ml/vllm:0.32.0"},
        "metrics": {"service": {"enabled": False}},
        "operator": {"logLevel": "DEBUG"},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    try:
        notes = cp.helm("install", release, str(CHART), "-n", release_ns, "-f", str(tmp_path / "values.yaml")).stdout
        assert "It watches GRPOJobs in these namespaces only" in notes and f"  - {job_ns}" in notes
        who = f"system:serviceaccount:{release_ns}:grpo-scoped"
        assert can_i(cp, who, "watch", "grpojobs.grpo.dev", "-n", job_ns)
        assert can_i(cp, who, "create", "pods", "-n", job_ns)
        assert not can_i(cp, who, "list", "grpojobs.grpo.dev", "--all-namespaces")
        assert not can_i(cp, who, "create", "pods", "-n", "default")
        assert can_i(cp, who, "get", "secrets", "-n", job_ns)  # rbac.secretNamespaces
        assert not can_i(cp, who, "list", "secrets", "-n", job_ns)  # never listed or watched
        assert not can_i(cp, who, "watch", "secrets", "-n", job_ns)
        assert not can_i(cp, who, "get", "secrets", "-n", other_ns)
        assert can_i(cp, who, "create", "secrets", "-n", job_ns)  # each job's vLLM key, never read back
        assert can_i(cp, who, "create", "networkpolicies.networking.k8s.io", "-n", job_ns)
        assert not can_i(cp, who, "patch", "networkpolicies.networking.k8s.io", "-n", job_ns)
        for kind in ("clusterroles", "validatingadmissionpolicies", "validatingadmissionpolicybindings"):
            assert cp.get_json(kind, "-l", f"app.kubernetes.io/instance={release}")["items"] == [], kind

        proc = start_operator_like_deployment(cp, release_ns, "grpo-scoped", tmp_path / "operator.log")
        assert proc.namespaces == [job_ns, other_ns]
        try:
            apply_jobs(cp, job_ns, job_manifest(), secret=False)
            apply_jobs(cp, other_ns, job_manifest(), secret=False)
            waiting = wait_job(cp, job_ns, "papillon", lambda j: cond(j, "Created").get("reason") == "MissingReference",
                               "Created=False/MissingReference")  # fmt: skip
            assert "Secret 'openai-api-key' not found" in cond(waiting, "Created")["message"]
            unchecked = wait_job(cp, other_ns, "papillon", is_true("Training"), "Training=True, unchecked")
            assert "Secret references not checked" in cond(unchecked, "Created")["message"]
            assert "rbac.secretNamespaces" in cond(unchecked, "Created")["message"]

            cp.kubectl("create", "secret", "generic", SECRET, "--from-literal=api-key=sk-test", "-n", job_ns)
            job = wait_job(cp, job_ns, "papillon", is_true("Training"), "Training=True")
            assert "not checked" not in cond(job, "Created")["message"]
            vllm = cp.wait_for_pod_phase(job_ns, "papillon-inference-0", "Running")
            assert vllm["spec"]["containers"][0]["image"] == "registry.example.com/ml/vllm:0.32.0"
        finally:
            proc.stop_and_check_log()  # job_ns deletes the job after: no finalizer waits for this operator
    finally:
        cp.helm("uninstall", release, "-n", release_ns, check=False)
        cp.delete_namespace(release_ns)
        delete_jobs(cp, other_ns)
        cp.delete_namespace(other_ns)


def test_default_install_runs_papillon_to_training_on_one_gpu_node(
    control_plane: ControlPlane, default_release: tuple[str, str], cluster_operator: OperatorProcess, job_ns: str
):
    cp, (release, release_ns) = control_plane, default_release
    crd = cp.get_json(CRD)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # the operator's own pod passed the release namespace's Pod Security "restricted" admission
    operator_pod = wait_until(
        lambda: cp.get_json("pods", namespace=release_ns)["items"], timeout=30, what="operator pod"
    )
    assert operator_pod[0]["spec"]["serviceAccountName"] == "grpo-grpo-operator"

    # namespace editors may run jobs, viewers only read them (the chart's aggregated ClusterRoles)
    cp.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", job_ns)
    cp.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", job_ns)
    wait_until(lambda: can_i(cp, "alice", "create", "grpojobs.grpo.dev", "-n", job_ns), timeout=15, what="aggregation")
    assert can_i(cp, "bob", "list", "grpojobs.grpo.dev", "-n", job_ns)
    assert not can_i(cp, "bob", "create", "grpojobs.grpo.dev", "-n", job_ns)
    assert not can_i(cp, "alice", "patch", "grpojobs.grpo.dev", "--subresource=status", "-n", job_ns)

    apply_jobs(cp, job_ns, job_manifest())
    job = wait_job(cp, job_ns, "papillon", is_true("Training"), "Training=True")
    assert cond(job, "InferenceReady")["status"] == "True" and cond(job, "Created")["status"] == "True"
    trainer = cp.wait_for_pod_phase(job_ns, "papillon-trainer-0", "Running")
    vllm = cp.wait_for_pod_phase(job_ns, "papillon-inference-0", "Running")
    assert trainer["spec"]["nodeName"] == vllm["spec"]["nodeName"] in cp.nodes
    node = cp.get_json("node", trainer["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert trainer["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "3"
    assert vllm["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert trainer["spec"]["containers"][0]["image"] == "ghcr.io/grpo-operator/grpo-trainer:0.1.0"
    assert vllm["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.32.0"


def test_argocd_health_follows_live_jobs(control_plane: ControlPlane, cluster_operator: OperatorProcess, job_ns: str):
    """Progressing while training, Suspended, Healthy once succeeded, Degraded once failed."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest("papillon"), job_manifest("doomed", runPolicy={"backoffLimit": 0}))
    seen: list[tuple[str, dict[str, Any]]] = []
    for name in ("papillon", "doomed"):
        seen.append(("Progressing", wait_job(cp, ns, name, is_true("Training"), "Training=True")))

    exit_running_pod(cp, ns, "doomed-trainer-0", 1)
    cp.kubectl("patch", "grpojob", "papillon", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    seen.append(("Degraded", wait_job(cp, ns, "doomed", is_true("Failed"), "Failed=True")))
    seen.append(("Suspended", wait_job(cp, ns, "papillon", is_true("Suspended"), "Suspended=True")))

    cp.kubectl("patch", "grpojob", "papillon", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True after resume")
    exit_running_pod(cp, ns, "papillon-trainer-0", 0)
    seen.append(("Healthy", wait_job(cp, ns, "papillon", is_true("Succeeded"), "Succeeded=True")))

    health = evaluate([job for _, job in seen])
    got = [(h.status, h.message) for h in health]
    assert [status for status, _ in got] == [expected for expected, _ in seen], got
    assert got[0][1].startswith("Running: ") and got[1][1].startswith("Running: ")
    assert got[2][1].startswith("BackoffLimitExceeded: pod doomed-trainer-0 failed, exit code 1"), got[2]
    assert got[3][1] == "Suspended: pods deleted; the volume and checkpoints are kept"
    assert got[4][1] == "TrainerSucceeded: trainer pod papillon-trainer-0 completed"


def test_crd_is_updated_by_helm_upgrade_and_kept_by_uninstall(control_plane: ControlPlane, tmp_path: Path):
    """The CRD lives in templates/: `helm upgrade` applies a changed CRD; `helm uninstall` keeps it and the jobs."""
    cp, release = control_plane, "grpo-crd"
    release_ns = cp.create_namespace(unique("grpo-crd"))
    jobs_ns = cp.create_namespace(unique("kept"))
    changed = tmp_path / "grpo-operator"
    shutil.copytree(CHART, changed)
    crd_doc = yaml.safe_load((changed / "files" / "crd.yaml").read_text())
    crd_doc["metadata"]["labels"]["grpo.dev/crd-revision"] = "2"
    schema = crd_doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["description"] = "GRPOJob, revision 2 of the schema."
    (changed / "files" / "crd.yaml").write_text(yaml.safe_dump(crd_doc, sort_keys=False))
    try:
        helm_install(cp, release, release_ns)
        assert cp.get_json(CRD)["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        original_description = cp.get_json(CRD)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get("description")
        cp.apply_yaml(yaml.safe_dump(job_manifest(suspend=True)), jobs_ns)  # suspended: no pods needed

        cp.helm("upgrade", release, str(changed), "-n", release_ns, "--reuse-values")
        live = cp.get_json(CRD)
        assert live["metadata"]["labels"]["grpo.dev/crd-revision"] == "2"
        assert live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] == schema["description"]

        cp.helm("upgrade", release, str(CHART), "-n", release_ns, "--reuse-values")
        live = cp.get_json(CRD)
        assert "grpo.dev/crd-revision" not in live["metadata"]["labels"]
        assert live["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get("description") == original_description

        cp.helm("uninstall", release, "-n", release_ns)
        assert cp.helm("status", release, "-n", release_ns, check=False).returncode != 0
        assert cp.get_json("deployments", namespace=release_ns)["items"] == []
        assert crd_exists(cp)
        assert get_job(cp, jobs_ns, "papillon")["spec"]["suspend"] is True
    finally:
        cp.helm("uninstall", release, "-n", release_ns, check=False)
        delete_jobs(cp, jobs_ns)
        cp.delete_namespace(release_ns)
        cp.delete_namespace(jobs_ns)


def test_rendered_operator_pod_passes_pod_security_restricted(control_plane: ControlPlane, tmp_path: Path):
    """The chart's operator pod template, created as a bare Pod: admitted under "restricted" (and runs on KWOK)."""
    cp = control_plane
    ns = cp.create_namespace(unique("psa"), labels=RESTRICTED)
    try:
        rendered = cp.helm("template", "grpo", str(CHART), "-n", ns).stdout
        (dep,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
        template = dep["spec"]["template"]
        cp.kubectl("create", "serviceaccount", template["spec"]["serviceAccountName"], "-n", ns)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", **template["metadata"]},
               "spec": template["spec"]}  # fmt: skip
        created = cp.kubectl("create", "-f", "-", "-n", ns, input=yaml.safe_dump(pod), check=False)
        assert created.returncode == 0, created.stderr
        assert "Warning" not in created.stderr  # no PodSecurity warnings either
        cp.wait_for_pod_phase(ns, "operator", "Running")

        # the namespace really enforces: the same pod without its security contexts is refused
        loose = copy.deepcopy(pod)
        loose["metadata"]["name"] = "operator-loose"
        loose["spec"].pop("securityContext")
        loose["spec"]["containers"][0].pop("securityContext")
        refused = cp.kubectl("create", "-f", "-", "-n", ns, input=yaml.safe_dump(loose), check=False)
        assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr
    finally:
        cp.delete_namespace(ns)
