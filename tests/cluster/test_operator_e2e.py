"""The operator end to end on the real control plane (tests/cluster/controlplane.py).

The chart is installed with helm; the operator runs as a local process with the
chart ServiceAccount's token (no image can run here), watching one namespace
that enforces Pod Security "restricted". Pods land on KWOK fake GPU nodes; KWOK
makes a pod Succeed/Fail when it is annotated ``grpo.test/exit``. Fakes and why:
KWOK nodes stand in for GPU nodes (no GPU here), and the trainer's /progress is
served by a small local HTTP server answering on the fake pod's IP (no trainer image
runs on a fake node; support/fake_trainer.py).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until

from grpo_operator.children import JOB_LABEL
from grpo_trainer.contract.progress import Progress
from support.chart import deployment
from support.cluster_jobs import (
    CHILD_KINDS,
    apply_jobs,
    children,
    cond,
    events,
    exit_running_pod,
    get_job,
    grpo,
    is_true,
    job_exists,
    job_manifest,
    pods,
    team_member,
    trainer_of_ip,
    wait_event,
    wait_job,
)
from support.fake_trainer import FakeTrainers
from support.latency import DelayProxy, upstream_of
from support.operator import OperatorProcess, kubeconfig_namespace, start_operator

pytestmark = pytest.mark.cluster

PAPILLON_CHILDREN = [
    "ConfigMap/papillon-config",
    "PersistentVolumeClaim/papillon-run",
    "Pod/papillon-inference-0",
    "Pod/papillon-trainer-0",
    "Service/papillon-vllm",
]
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"  # earlier operator versions put it on every job


# --------------------------------------------------------------------------- helpers


def running(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    return cp.wait_for_pod_phase(ns, name, "Running", timeout=30)


def run_mount(pod: dict[str, Any]) -> dict[str, Any]:
    """How the pod's container mounts the job's run volume."""
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "run"]
    return mount


# --------------------------------------------------------------------------- tests


def test_papillon_job_runs_reports_progress_and_succeeds(
    control_plane: ControlPlane,
    job_ns: str,
    operator: OperatorProcess,
    operator_kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    cp, ns = control_plane, job_ns
    release_ns = kubeconfig_namespace(operator_kubeconfig)
    apply_jobs(cp, ns, job_manifest())
    job = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    uid = job["metadata"]["uid"]

    assert children(cp, ns) == PAPILLON_CHILDREN
    for kind in CHILD_KINDS.split(","):
        for item in cp.get_json(kind, namespace=ns)["items"]:
            if item["metadata"]["name"] == "kube-root-ca.crt":
                continue
            (owner,) = item["metadata"]["ownerReferences"]
            assert owner["uid"] == uid and owner["controller"] is True, item["metadata"]["name"]
    trainer, vllm = running(cp, ns, "papillon-trainer-0"), running(cp, ns, "papillon-inference-0")
    # grpo logs: a KWOK node keeps no container logs, and says so; its words come back naming the pod (not a
    # missing CRD), and a follower, which gives a just-started pod's node a moment, gives up while the pod runs
    from grpo_operator.client import cluster_jobs
    from grpo_operator.client.errors import GRPOError

    monkeypatch.setattr(cluster_jobs, "LOG_OPEN_PATIENCE_SECONDS", 3.0)
    jobs = cluster_jobs.ClusterJobs(ns, kubeconfig=str(team_member(cp, ns)))
    for follow in (False, True):
        with pytest.raises(GRPOError) as refused:
            list(jobs.logs("papillon", follow=follow))
        assert "the log of pod papillon-trainer-0 is not available: " in str(refused.value)
        assert "no logs found for container" in str(refused.value) and "papillon-trainer-0" in str(refused.value)
    # the job's own vLLM key: generated, in an immutable Secret the job owns, read by both pods (and only there)
    secrets = cp.get_json("secrets", "-l", JOB_LABEL, namespace=ns)["items"]
    (secret,) = secrets
    assert secret["metadata"]["name"] == f"papillon-vllm-key-{uid[:8]}" and secret["immutable"] is True
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [uid]
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    config = cp.get_json("configmap", "papillon-config", namespace=ns)
    assert len(key) >= 43 and key not in json.dumps([trainer, vllm, config])
    for pod in (trainer, vllm):
        (var,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "VLLM_API_KEY"]
        assert var["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "api-key"}
    # its NetworkPolicies: vLLM admits the job's trainer, the trainer the operator's pods (the chart's namespace)
    policies = {p["metadata"]["name"]: p for p in cp.get_json("networkpolicies", namespace=ns)["items"]}
    assert set(policies) == {"papillon-inference", "papillon-trainer"}
    assert all([o["uid"] for o in p["metadata"]["ownerReferences"]] == [uid] for p in policies.values())
    vllm_from = policies["papillon-inference"]["spec"]["ingress"][0]["from"]
    trainer_pods = {JOB_LABEL: "papillon", "app.kubernetes.io/component": "trainer"}
    assert vllm_from == [{"podSelector": {"matchLabels": trainer_pods}}]
    (operator_peer,) = policies["papillon-trainer"]["spec"]["ingress"][0]["from"]
    assert operator_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": release_ns}}
    operator_pods = deployment(cp, release_ns)["spec"]["template"]["metadata"]["labels"]
    assert operator_peer["podSelector"]["matchLabels"].items() <= operator_pods.items()
    assert trainer["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "3"
    assert vllm["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert trainer["spec"]["nodeName"] == vllm["spec"]["nodeName"] in cp.nodes  # RWO: one node
    assert (
        yaml.safe_load(cp.get_json("configmap", "papillon-config", namespace=ns)["data"]["config.json"])["job_name"]
        == "papillon"
    )

    # kubectl get grpojobs shows the state columns
    table = cp.kubectl("get", "grpojobs", "-n", ns).stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "STATE", "STEP", "MAX", "REWARD"]
    assert table[1].split()[:2] == ["papillon", "Training"]

    # the trainer reports progress on its pod IP; the operator copies it into status and metrics
    trainers = FakeTrainers(int(operator.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    # the trainer's own document (grpo_trainer.contract.progress), as its /progress serves it
    doc = Progress(job="papillon", step=7, max_steps=500, reward_mean=0.42, val_score=0.5, adapter_version="policy-v7")
    trainers.set("papillon", **doc.model_dump(mode="json"))
    try:
        job = wait_job(cp, ns, "papillon", lambda j: j["status"].get("step") == 7, "status.step from /progress")
        assert job["status"]["trainReward"] == 0.42 and job["status"]["adapterVersion"] == "policy-v7"
        assert cond(job, "Training")["message"] == "step 7/500"

        def scraped_step() -> str | None:
            text = operator.metrics()
            return text if f'grpo_job_step{{name="papillon",namespace="{ns}"}} 7.0' in text else None

        metrics = wait_until(scraped_step, timeout=15, what="step in /metrics")
        assert f'grpo_job_state{{name="papillon",namespace="{ns}",state="Training"}} 1.0' in metrics
        assert f'grpo_job_train_reward{{name="papillon",namespace="{ns}"}} 0.42' in metrics
        assert "grpo_operator_reconcile_duration_seconds_count" in metrics
    finally:
        trainers.close()

    exit_running_pod(cp, ns, "papillon-trainer-0", 0)
    job = wait_job(cp, ns, "papillon", is_true("Succeeded"), "Succeeded=True")
    assert job["status"]["completionTime"]
    assert cp.kubectl("get", "grpojobs", "-n", ns).stdout.splitlines()[1].split()[1] == "Succeeded"
    wait_until(lambda: "papillon-inference-0" not in pods(cp, ns), timeout=20, what="vLLM pod freed")
    for reason in ("Created", "ChildrenCreated", "Running", "TrainerSucceeded"):
        wait_event(cp, ns, reason, kind="GRPOJob")
    cp.kubectl("wait", "--for=condition=Succeeded", "grpojob/papillon", "-n", ns, "--timeout=10s")


def test_trainer_failure_is_retried_then_fails_at_backoff_limit(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest(runPolicy={"backoffLimit": 1}))
    wait_until(lambda: "papillon-trainer-0" in pods(cp, ns), timeout=30, what="trainer-0")
    exit_running_pod(cp, ns, "papillon-trainer-0", 1)
    job = wait_job(
        cp,
        ns,
        "papillon",
        lambda j: j["status"].get("restarts") == 1 and "papillon-trainer-1" in pods(cp, ns),
        "restart 1",
    )
    assert job["status"]["trainerPod"] == "papillon-trainer-1"
    wait_until(lambda: "papillon-trainer-0" not in pods(cp, ns), timeout=20, what="failed attempt removed")
    exit_running_pod(cp, ns, "papillon-trainer-1", 137)
    job = wait_job(cp, ns, "papillon", is_true("Failed"), "Failed=True")
    assert cond(job, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "exit code 137" in cond(job, "Failed")["message"]
    assert job["status"]["restarts"] == 1 and job["status"]["completionTime"]
    assert cp.kubectl("get", "grpojobs", "-n", ns).stdout.splitlines()[1].split()[1] == "Failed"
    for reason in ("TrainerFailed", "BackoffLimitExceeded"):
        wait_event(cp, ns, reason, type="Warning")


def test_operator_killed_mid_creation_makes_exactly_one_set_of_children(
    control_plane: ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
):
    """SIGKILL the operator five times, each time right after it created another child.

    The operator reaches the API server through a proxy that delays each request
    by 150 ms (a slow API server), so its creations are spread over seconds and
    the kills land between them.
    """
    cp, ns = control_plane, job_ns
    proxy = DelayProxy(upstream_of(operator_kubeconfig), delay=0.15)
    slow = proxy.kubeconfig(operator_kubeconfig, tmp_path / "slow.kubeconfig")
    apply_jobs(cp, ns, job_manifest())
    proc = start_operator(cp, slow, ns, tmp_path / "operator.log")
    seen_at_kill: list[int] = []
    try:
        for _ in range(5):
            before = len(children(cp, ns))
            if before < 5:
                wait_until(lambda n=before: len(children(cp, ns)) > n, timeout=30, interval=0.05, what="the next child")
            proc.kill()
            seen_at_kill.append(len(children(cp, ns)))
            proc.start(wait=False)
        proc.wait_healthy()
        wait_job(cp, ns, "papillon", is_true("Training"), "Training=True after the kills", timeout=60)
        seen = proc.reconciles(ns, "papillon")  # two more reconciles of the job: nothing new may appear
        wait_until(lambda: proc.reconciles(ns, "papillon") >= seen + 2, timeout=30, what="two more reconciles")
    finally:
        proc.stop_and_check_log()
        proxy.close()
    assert any(0 < n < 5 for n in seen_at_kill), f"no kill landed mid-creation: children at each kill {seen_at_kill}"
    assert children(cp, ns) == PAPILLON_CHILDREN
    assert get_job(cp, ns, "papillon")["status"]["restarts"] == 0


def test_suspend_deletes_pods_keeps_volume_and_resume_recreates(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    """Through the grpo CLI, as a team member with the namespace's edit role: stop suspends (pods go, the
    volume stays), status says so, resume recreates the pods on the same volume."""
    cp, ns = control_plane, job_ns
    alice = team_member(cp, ns)
    apply_jobs(cp, ns, job_manifest())
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    pvc_uid = cp.get_json("pvc", "papillon-run", namespace=ns)["metadata"]["uid"]
    stop = grpo(alice, "stop", "papillon", "-n", ns)
    assert stop.returncode == 0 and "volume and checkpoints are kept" in stop.stdout, stop.stderr
    wait_job(cp, ns, "papillon", is_true("Suspended"), "Suspended=True")
    wait_until(lambda: not pods(cp, ns), timeout=20, what="pods deleted")
    assert cp.get_json("pvc", "papillon-run", namespace=ns)["metadata"]["uid"] == pvc_uid
    assert cp.kubectl("get", "grpojobs", "-n", ns).stdout.splitlines()[1].split()[1] == "Suspended"
    status = grpo(alice, "status", "papillon", "-n", ns, "-o", "json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "Suspended", status.stderr
    resume = grpo(alice, "resume", "papillon", "-n", ns)
    assert resume.returncode == 0, resume.stderr
    job = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True after resume")
    assert cond(job, "Suspended")["status"] == "False"
    assert set(pods(cp, ns)) == {"papillon-trainer-0", "papillon-inference-0"}
    assert cp.get_json("pvc", "papillon-run", namespace=ns)["metadata"]["uid"] == pvc_uid
    table = grpo(alice, "status", "-n", ns).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATE", "STEP"] and table[1].split()[:2] == ["papillon", "Training"]


def test_compile_submits_its_job_with_code_data_and_keys_owned_by_it_and_a_rerun_finds_it(
    control_plane: ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
):
    """What compile() creates with a team member's rights: the GRPOJob, its code and data ConfigMaps and the
    Secret of the untrusted model's key, all owned by the job (collected with it); the key only in the Secret.
    The same submission again finds the job; other content under its name is refused; the API server's own
    refusal comes back naming the field. (No operator: nothing here runs the job.)"""
    import dspy

    from grpo_operator.client.cluster_jobs import ClusterJobs
    from grpo_operator.client.code_bundle import make_bundle
    from grpo_operator.client.errors import JobRejected
    from grpo_operator.client.student import analyse
    from grpo_operator.client.submission import build
    from support.own_program import OWN_PROGRAM

    cp, ns = control_plane, job_ns
    jobs = ClusterJobs(ns, kubeconfig=str(team_member(cp, ns)))
    sys.path.insert(0, str(OWN_PROGRAM))
    try:
        from topics.metric import topic_match  # type: ignore[import-not-found]
        from topics.program import Topic  # type: ignore[import-not-found]

        student = Topic()
        student.set_lm(dspy.LM("openai/Qwen/Qwen2.5-0.5B-Instruct"))
        paths, bundle = make_bundle({"program": Topic, "metric": topic_match}, tmp_path / "code")
    finally:
        sys.path.remove(str(OWN_PROGRAM))
    rows = [dspy.Example(text=f"a match report {i}", topic="sport").with_inputs("text") for i in range(6)]

    def submission(steps: int):
        return build(
            student=analyse(student), bundle=bundle, paths=paths, trainset=rows, valset=rows[:2],
            grpo={"num_train_steps": steps}, train_kwargs={}, model=None, name="topics-compiled",
            spec_overrides={"serve": {"enabled": True}}, main_ns={},
        )

    sub = submission(5)
    sub.secret_data["untrusted-api-key"] = "sk-test-never-in-the-job"  # as if the student named a keyed endpoint
    sub.secret_env["GRPO_UNTRUSTED_API_KEY"] = "untrusted-api-key"
    created = jobs.submit(sub, "digest-1")
    owner = {"kind": "GRPOJob", "name": "topics-compiled", "uid": created["metadata"]["uid"]}
    for kind, name in (("configmap", "topics-compiled-code"), ("secret", "topics-compiled-keys")):
        refs = cp.get_json(kind, name, namespace=ns)["metadata"]["ownerReferences"]
        assert [{k: r[k] for k in owner} for r in refs] == [owner], (kind, refs)
    assert "sk-test-never-in-the-job" not in json.dumps(cp.get_json("grpojob", "topics-compiled", namespace=ns))
    job = cp.get_json("grpojob", "topics-compiled", namespace=ns)
    assert job["spec"]["code"] == [{"configMap": {"name": "topics-compiled-code"}}]
    assert len(job["spec"]["data"]["train"]["inline"]["rows"]) == 6
    assert jobs.submit(sub, "digest-1")["metadata"]["uid"] == created["metadata"]["uid"]  # a re-run finds it
    with pytest.raises(JobRejected, match="already exists .* with other content; pass GRPO\\(name=...\\)"):
        jobs.submit(submission(6), "digest-2")
    bad = json.loads(json.dumps(submission(5).job))
    bad["metadata"]["name"] = "topics-refused"
    bad["spec"]["grpo"]["num_samples_per_input"] = 1
    with pytest.raises(JobRejected) as refused:
        jobs.apply(bad)
    assert any("spec.grpo.num_samples_per_input" in p for p in refused.value.problems), refused.value.problems


def test_unschedulable_job_says_why_within_a_minute(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    doc = job_manifest()
    doc["spec"]["trainKwargs"]["num_training_gpus"] = 8  # no node has 8 GPUs
    apply_jobs(cp, ns, doc)
    started = time.monotonic()
    job = wait_job(
        cp,
        ns,
        "papillon",
        lambda j: cond(j, "Training").get("reason") == "Unschedulable",
        "Training=False/Unschedulable",
        timeout=60,
    )
    assert time.monotonic() - started < 60
    message = cond(job, "Training")["message"]
    assert "papillon-trainer-0" in message and "nvidia.com/gpu" in message
    wait_event(cp, ns, "Unschedulable", type="Warning")


def test_rwo_pods_that_cannot_share_a_node_are_moved_together_to_one_that_fits(
    control_plane: ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
):
    """The scheduler places the two pods one at a time: on a 3-GPU node the first leaves no room
    for the second. The operator deletes both after replace_unplaceable_seconds and recreates them
    off that node, so both land on the 4-GPU node that appears meanwhile."""
    cp, ns = control_plane, job_ns
    pool = {"grpo.test/pool": ns[-5:]}  # only this test's pods go to its nodes
    small, big = f"small-{ns[-5:]}", f"big-{ns[-5:]}"
    cp.add_gpu_nodes([small], gpus=3, labels=pool)
    log = tmp_path / "operator.log"
    proc = start_operator(cp, operator_kubeconfig, ns, log, {"GRPO_REPLACE_UNPLACEABLE_SECONDS": "5"})
    try:
        apply_jobs(cp, ns, job_manifest(trainer={"nodeSelector": pool}, inference={"nodeSelector": pool}))

        def one_placed_one_stuck() -> bool:
            ps = pods(cp, ns).values()
            stuck = [p for p in ps if any(
                c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in p.get("status", {}).get("conditions", []))]  # fmt: skip
            return len(stuck) == 1 and any(p["spec"].get("nodeName") == small for p in ps)

        def stuck_on_the_small_node() -> bool:
            # the state lasts replace_unplaceable_seconds (5 s) before the operator recreates both, stuck
            # again: a loaded machine's polls can miss it; the operator's Replacing event says it was there
            return one_placed_one_stuck() or any(e["reason"] == "Replacing" for e in events(cp, ns))

        wait_until(stuck_on_the_small_node, timeout=60, what="one pod on the 3-GPU node, the other unschedulable")
        cp.add_gpu_nodes([big], gpus=4, labels=pool)

        def together_on_big() -> dict[str, Any] | None:
            ps = pods(cp, ns)
            both = [ps.get("papillon-trainer-0"), ps.get("papillon-inference-0")]
            ok = all(p and p["spec"].get("nodeName") == big and p["status"].get("phase") == "Running" for p in both)
            return ps if ok else None

        wait_until(together_on_big, timeout=120, what="both pods running on the 4-GPU node")
        job = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
        assert job["status"]["placement"]["replacements"] >= 1
        assert job["status"]["restarts"] == 0 and job["status"]["interruptions"] == 0  # no attempt was spent
        replacing = wait_event(cp, ns, "Replacing")
        assert all(e["type"] == "Warning" for e in replacing)
        assert any(f"on node {small}" in e["message"] and "recreating both off that node" in e["message"]
                   for e in replacing), [e["message"] for e in replacing]
    finally:
        proc.stop_and_check_log()
        # the pods go before their nodes (a pod on a deleted node lingers until the pod GC gets to it,
        # and keeps the namespace terminating into the next test)
        cp.kubectl("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--wait=true", "--timeout=60s", check=False)
        cp.kubectl("delete", "node", small, big, "--ignore-not-found", check=False)


def test_missing_secret_and_claim_are_named_until_they_appear(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest(storage={"existingClaim": "shared-runs"}), secret=False)
    job = wait_job(
        cp,
        ns,
        "papillon",
        lambda j: cond(j, "Created").get("reason") == "MissingReference",
        "Created=False/MissingReference",
    )
    message = cond(job, "Created")["message"]
    assert "Secret 'openai-api-key'" in message and "PersistentVolumeClaim 'shared-runs'" in message
    assert not pods(cp, ns)
    cp.kubectl("create", "secret", "generic", "openai-api-key", "--from-literal=api-key=sk-test", "-n", ns)
    job = wait_job(
        cp, ns, "papillon", lambda j: "openai-api-key" not in cond(j, "Created")["message"], "the Secret is found"
    )
    assert "shared-runs" in cond(job, "Created")["message"] and not pods(cp, ns)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "shared-runs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cp.apply_yaml(yaml.safe_dump(claim), ns)
    # a second job on the same claim: each job's pods mount only its own folder of it
    cp.apply_yaml(yaml.safe_dump(job_manifest("second", storage={"existingClaim": "shared-runs"})), ns)
    for name in ("papillon", "second"):
        job = wait_job(cp, ns, name, is_true("Training"), "Training=True once both exist")
        assert job["status"]["runPath"] == f"runs/{name}"
        for pod in (f"{name}-trainer-0", f"{name}-inference-0"):
            spec = pods(cp, ns)[pod]
            assert {"name": "run", "persistentVolumeClaim": {"claimName": "shared-runs"}} in spec["spec"]["volumes"]
            assert run_mount(spec) == {"name": "run", "mountPath": "/mnt/grpo", "subPath": f"runs/{name}"}, pod
    assert "PersistentVolumeClaim/papillon-run" not in children(cp, ns)


def test_a_kept_volume_outlives_its_job_and_a_new_job_mounts_it_only_when_told(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    """storage.retainOnDelete: the finished job is deleted by its TTL, the garbage collector takes the
    pods but not the volume; a job re-applied under the name is told about the volume instead of
    silently resuming from it, and one that names it as existingClaim mounts it."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest(storage={"retainOnDelete": True}, runPolicy={"ttlSecondsAfterFinished": 1}))
    job_uid = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")["metadata"]["uid"]
    volume_uid = cp.get_json("pvc", "papillon-run", namespace=ns)["metadata"]["uid"]
    own_volume_mount = run_mount(pods(cp, ns)["papillon-trainer-0"])
    exit_running_pod(cp, ns, "papillon-trainer-0", 0)
    wait_until(lambda: not job_exists(cp, ns, "papillon"), timeout=60, what="the finished job deleted by its TTL")
    wait_until(lambda: not pods(cp, ns), timeout=60, what="the job's pods collected")
    claim = cp.get_json("pvc", "papillon-run", namespace=ns)
    assert claim["metadata"]["uid"] == volume_uid and not claim["metadata"].get("ownerReferences")
    assert claim["metadata"]["labels"][JOB_LABEL] == "papillon" and not claim["metadata"].get("deletionTimestamp")
    assert claim["metadata"]["annotations"]["grpo.dev/retained-from"] == job_uid  # kept, not orphaned

    cp.apply_yaml(yaml.safe_dump(job_manifest()), ns)
    job = wait_job(
        cp, ns, "papillon", lambda j: "storage.existingClaim: papillon-run" in cond(j, "Created").get("message", ""),
        "Created=False naming the kept volume",
    )  # fmt: skip
    assert cond(job, "Created")["status"] == "False" and not pods(cp, ns)
    cp.kubectl("delete", "grpojob", "papillon", "-n", ns, "--wait=true", "--timeout=30s")

    cp.apply_yaml(yaml.safe_dump(job_manifest(storage={"existingClaim": "papillon-run"})), ns)
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True on the kept volume")
    volumes = pods(cp, ns)["papillon-trainer-0"]["spec"]["volumes"]
    assert {"name": "run", "persistentVolumeClaim": {"claimName": "papillon-run"}} in volumes
    assert cp.get_json("pvc", "papillon-run", namespace=ns)["metadata"]["uid"] == volume_uid
    # the same folder of it as the job that made it: the run resumes from its checkpoints
    assert run_mount(pods(cp, ns)["papillon-trainer-0"]) == own_volume_mount
    assert own_volume_mount["subPath"] == "runs/papillon"


def test_a_job_with_serve_keeps_its_vllm_pod_after_success_until_serve_is_turned_off(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest(serve={"enabled": True}))
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    exit_running_pod(cp, ns, "papillon-trainer-0", 0)
    job = wait_job(
        cp, ns, "papillon", lambda j: is_true("Succeeded")(j) and is_true("InferenceReady")(j), "Succeeded, serving"
    )
    assert cond(job, "InferenceReady")["reason"] == "Serving"
    # no trainer reported a result here (KWOK): the base model is what is served
    key_ref = {"name": f"papillon-vllm-key-{job['metadata']['uid'][:8]}", "key": "api-key"}
    assert job["status"]["endpoint"] == {
        "url": f"http://papillon-vllm.{ns}.svc.cluster.local:8000/v1", "model": job["spec"]["model"]["name"],
        "apiKeySecretRef": key_ref,
    }  # fmt: skip
    assert cp.get_json("secret", key_ref["name"], namespace=ns)["data"]["api-key"]  # what a client reads
    assert cp.get_json("pod", "papillon-inference-0", namespace=ns)["status"]["phase"] == "Running"
    # serving opens the vLLM pod to the pods of its namespace (the endpoint's clients)
    serve = cp.get_json("networkpolicy", "papillon-serve", namespace=ns)
    assert serve["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    assert serve["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

    cp.kubectl("patch", "grpojob", "papillon", "-n", ns, "--type=merge", "-p", '{"spec":{"serve":{"enabled":false}}}')
    wait_until(lambda: "papillon-inference-0" not in pods(cp, ns), timeout=30, what="the vLLM pod freed")
    job = wait_job(cp, ns, "papillon", lambda j: "endpoint" not in j["status"], "no endpoint")
    assert is_true("Succeeded")(job)


def test_children_orphaned_by_an_earlier_job_are_named_not_used_until_deleted(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    """kubectl delete --cascade=orphan leaves the children, owned by no one, under the names a
    re-applied job would use: the job says which and what to do, creates no pod beside them, and
    runs once they are gone."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest())
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    cp.kubectl("delete", "grpojob", "papillon", "-n", ns, "--cascade=orphan", "--wait=true", "--timeout=30s")
    wait_until(lambda: not cp.get_json("configmap", "papillon-config", namespace=ns)["metadata"].get("ownerReferences"),
               timeout=30, what="the orphaned children released by the garbage collector")  # fmt: skip
    orphans = {p["metadata"]["uid"] for p in cp.get_json("pods", namespace=ns)["items"]}

    cp.apply_yaml(yaml.safe_dump(job_manifest()), ns)
    job = wait_job(cp, ns, "papillon", lambda j: cond(j, "Created").get("reason") == "CreateFailed", "CreateFailed")
    message = cond(job, "Created")["message"]
    assert "ConfigMap papillon-config: exists and belongs to no job" in message and "--cascade=orphan" in message
    assert {p["metadata"]["uid"] for p in cp.get_json("pods", namespace=ns)["items"]} == orphans  # none added

    cp.kubectl("delete", "pods,configmaps,services,pvc,networkpolicies", "-l", f"{JOB_LABEL}=papillon", "-n", ns,
               "--wait=true", "--timeout=60s")  # fmt: skip
    job = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True on its own children", timeout=60)
    assert cond(job, "Created")["status"] == "True"
    owner = cp.get_json("configmap", "papillon-config", namespace=ns)["metadata"]["ownerReferences"][0]["uid"]
    assert owner == job["metadata"]["uid"]


def test_deleting_the_job_leaves_no_children(control_plane: ControlPlane, job_ns: str, operator: OperatorProcess):
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest())
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    assert operator.metrics().count(f'namespace="{ns}"') > 0
    cp.kubectl("delete", "grpojob", "papillon", "-n", ns, "--wait=true", "--timeout=30s")
    wait_until(lambda: children(cp, ns) == [], timeout=45, what="garbage collection of every child")
    wait_until(lambda: f'namespace="{ns}"' not in operator.metrics(), timeout=10, what="job metrics dropped")


def test_job_reapplied_under_the_same_name_gets_its_own_children_not_the_old_ones(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    """``kubectl delete`` then ``apply`` again (with a change): the old job's children linger
    until the garbage collector is done with them (held here by a finalizer, so the overlap is
    certain), and must not stand in for the new job's, nor be remembered as its."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest())
    old = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    held = ["configmap/papillon-config", "pvc/papillon-run", "service/papillon-vllm"]
    for obj in held:
        cp.kubectl("patch", obj, "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":["grpo.test/hold"]}}')
    cp.kubectl("delete", "grpojob", "papillon", "-n", ns, "--wait=true", "--timeout=30s")
    apply_jobs(cp, ns, job_manifest(untrustedModel={"model": "gpt-4.1-nano"}), secret=False)
    new_uid = wait_job(cp, ns, "papillon", lambda j: j["metadata"]["uid"] != old["metadata"]["uid"], "new job")
    # the operator has decided about the old children, going but still there: it tried to create the
    # new job's own and met them
    job = wait_job(cp, ns, "papillon", lambda j: cond(j, "Created").get("reason") == "CreateFailed", "CreateFailed")
    assert job["metadata"]["uid"] == new_uid["metadata"]["uid"]
    assert not is_true("Training")(job), "trained on the old job's children"
    assert "papillon-config" in cond(job, "Created")["message"]

    for obj in held:
        cp.kubectl("patch", obj, "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    job = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True on its own children", timeout=30)
    uid = job["metadata"]["uid"]
    assert uid == new_uid["metadata"]["uid"]
    items = [i for i in cp.get_json(CHILD_KINDS, namespace=ns)["items"] if i["metadata"]["name"].startswith("papillon")]
    assert sorted(f"{i['kind']}/{i['metadata']['name']}" for i in items) == PAPILLON_CHILDREN
    for item in items:
        owners = [o["uid"] for o in item["metadata"].get("ownerReferences") or []]
        assert owners == [uid], f"{item['kind']}/{item['metadata']['name']} is owned by {owners}, not the new job"
    config = next(i for i in items if i["kind"] == "ConfigMap")
    assert "gpt-4.1-nano" in json.dumps(config["data"])


def test_job_deleted_while_no_operator_runs_goes_at_once_and_its_children_are_collected(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    """As after ``helm uninstall`` or with the operator down: nothing holds a deletion up."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest())
    job = wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    assert not job["metadata"].get("finalizers"), job["metadata"]["finalizers"]
    assert children(cp, ns) == PAPILLON_CHILDREN

    operator.stop()
    started = time.monotonic()
    deleted = cp.kubectl("delete", "grpojob", "papillon", "-n", ns, "--wait=true", "--timeout=20s", check=False)
    took = time.monotonic() - started
    assert deleted.returncode == 0, deleted.stderr
    assert took < 5, f"kubectl delete took {took:.1f}s"
    assert not job_exists(cp, ns, "papillon")
    wait_until(lambda: children(cp, ns) == [], timeout=45, what="garbage collection of every child")


def test_jobs_left_with_kopf_finalizer_by_an_older_operator_are_released_on_start(
    control_plane: ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
):
    """An upgrade from a version that kept Kopf's finalizer on jobs: a running job loses it, a job
    deleted while no operator ran (stuck Terminating) goes, as soon as the new operator starts.
    And from one that kept each job's run at its volume's root: a job whose pods it had created
    (its status names them, and has no runPath) keeps its run there, so its next attempt resumes."""
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest("running"), job_manifest("stuck"))
    for name in ("running", "stuck"):
        cp.kubectl("patch", "grpojob", name, "-n", ns, "--type=merge",
                   "-p", json.dumps({"metadata": {"finalizers": [KOPF_FINALIZER]}}))  # fmt: skip
    old_status = {"restarts": 0, "interruptions": 0, "inferenceRestarts": 0, "trainerPod": "running-trainer-0",
                  "inferencePod": "running-inference-0"}  # fmt: skip
    cp.kubectl("patch", "grpojob", "running", "-n", ns, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": old_status}))  # fmt: skip
    cp.kubectl("delete", "grpojob", "stuck", "-n", ns, "--wait=false")
    assert get_job(cp, ns, "stuck")["metadata"]["deletionTimestamp"]  # Terminating, held by the finalizer

    proc = start_operator(cp, operator_kubeconfig, ns, tmp_path / "operator.log")
    try:
        wait_until(lambda: not job_exists(cp, ns, "stuck"), timeout=20, what="the Terminating job released")
        job = wait_job(cp, ns, "running", is_true("Training"), "Training=True")
        wait_job(cp, ns, "running", lambda j: not j["metadata"].get("finalizers"), "Kopf's finalizer removed")
        assert "Pod/running-trainer-0" in children(cp, ns) and "Pod/stuck-trainer-0" not in children(cp, ns)
        assert cond(job, "Created")["status"] == "True"
        assert job["status"]["runPath"] == "."
        assert run_mount(pods(cp, ns)["running-trainer-0"]) == {"name": "run", "mountPath": "/mnt/grpo"}
    finally:
        proc.stop_and_check_log()


def test_lost_vllm_pod_is_recreated_while_the_trainer_waits(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest())
    wait_job(cp, ns, "papillon", is_true("InferenceReady"), "InferenceReady=True")
    exit_running_pod(cp, ns, "papillon-inference-0", 1)
    job = wait_job(cp, ns, "papillon", lambda j: j["status"].get("inferenceRestarts") == 1, "inferenceRestarts=1")
    assert cond(job, "Failed").get("status") == "False" and job["status"]["restarts"] == 0
    job = wait_job(cp, ns, "papillon", is_true("InferenceReady"), "vLLM ready again")
    assert set(pods(cp, ns)) == {"papillon-trainer-0", "papillon-inference-1"}
    assert pods(cp, ns)["papillon-trainer-0"]["status"]["phase"] == "Running"


def test_deadline_fails_the_job_and_ttl_deletes_it(control_plane: ControlPlane, job_ns: str, operator: OperatorProcess):
    cp, ns = control_plane, job_ns
    apply_jobs(cp, ns, job_manifest(runPolicy={"activeDeadlineSeconds": 3, "ttlSecondsAfterFinished": 3}))
    job = wait_job(cp, ns, "papillon", is_true("Failed"), "Failed=True", timeout=30)
    assert cond(job, "Failed")["reason"] == "DeadlineExceeded"
    wait_until(lambda: not job_exists(cp, ns, "papillon"), timeout=30, what="TTL deletion")
    wait_until(lambda: children(cp, ns) == [], timeout=45, what="garbage collection after TTL")
