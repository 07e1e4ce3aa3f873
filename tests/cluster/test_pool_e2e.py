"""Inference pools end to end on the real control plane: the chart's operator (a local process with the chart
ServiceAccount's token) keeps a GRPOInferencePool's server, Service, key and volume, attaches jobs to it
(no vLLM pod of their own, their trainers pointed at the pool), counts its slots across them, and refuses the
jobs that may not use it: at create (the chart's admission policies), or before creating anything. Fakes and
why: the pods run on KWOK fake GPU nodes (no GPU here), so nothing in them runs, and their trainers' /progress
is support/fake_trainer.py's; a real training run on a pool is tests/cluster/test_training_e2e.py's."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until

from grpo_trainer.contract.progress import Progress, RunResult
from support.cluster_jobs import (
    POOL_MODEL,
    apply_jobs,
    cond,
    create_job,
    exit_running_pod,
    get_job,
    is_true,
    on_pool,
    pods,
    pool_manifest,
    trainer_of_ip,
    wait_event,
    wait_job,
    wait_refused,
)
from support.fake_trainer import FakeTrainers
from support.operator import OperatorProcess

pytestmark = pytest.mark.cluster


def get_pool(cp: ControlPlane, ns: str, name: str = "shared") -> dict[str, Any]:
    return cp.get_json("grpoinferencepool", name, namespace=ns)


def served_list(cp: ControlPlane, ns: str, name: str = "shared") -> dict[str, str]:
    """The results the pool's servers answer for, as its ConfigMap lists them."""
    return json.loads(cp.get_json("configmap", f"{name}-config", namespace=ns)["data"]["served-results.json"])


def pool_cond(pool: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in pool.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def test_a_pool_serves_its_jobs_counts_their_slots_and_refuses_those_that_cannot_use_it(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    cp.apply_yaml(yaml.safe_dump(pool_manifest()), ns)
    pool = wait_until(
        lambda: p if (p := get_pool(cp, ns)).get("status", {}).get("readyReplicas") == 1 else None,
        timeout=30,
        what="the pool's server ready",
    )
    uid = pool["metadata"]["uid"]
    assert pool_cond(pool, "Ready")["status"] == "True" and pool["status"]["slots"] == 8
    server = cp.get_json("pod", "shared-vllm-0", namespace=ns)
    argv = server["spec"]["containers"][0]["command"]
    assert argv[argv.index("--max-cpu-loras") + 1] == "8" and argv[argv.index("--max-lora-rank") + 1] == "16"
    assert server["metadata"]["ownerReferences"][0]["uid"] == uid
    claim = cp.get_json("pvc", "shared-adapters", namespace=ns)
    assert "ownerReferences" not in claim["metadata"]  # deleting the pool keeps its jobs' runs
    (secret,) = [s for s in cp.get_json("secrets", namespace=ns)["items"] if s["metadata"]["name"].startswith("shared-")]
    assert secret["metadata"]["name"] == f"shared-vllm-key-{uid[:8]}" and secret["immutable"] is True
    assert pool["status"]["endpoint"]["apiKeySecretRef"] == {"name": secret["metadata"]["name"], "key": "api-key"}
    table = cp.kubectl("get", "grpoinferencepools", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "JOBS", "SLOTS", "USED", "LOADED", "AGE"]

    # two jobs attach (8 slots, 4 each); a third waits with a condition and an Event naming the fix
    apply_jobs(cp, ns, on_pool("first"), on_pool("second"))
    first = wait_job(cp, ns, "first", is_true("Training"), "first Training=True")
    wait_job(cp, ns, "second", is_true("Training"), "second Training=True")
    apply_jobs(cp, ns, on_pool("third"), secret=False)
    third = wait_job(cp, ns, "third", lambda j: cond(j, "Training").get("reason") == "PoolFull", "third PoolFull")
    assert "held by first, second" in cond(third, "Training")["message"]
    assert "third-trainer-0" not in pods(cp, ns)
    pool = get_pool(cp, ns)
    assert [j["name"] for j in pool["status"]["jobs"]] == ["first", "second"] and pool["status"]["waiting"] == ["third"]
    assert pool_cond(pool, "SlotsAvailable")["reason"] == "PoolFull"

    # an attached job: no vLLM pod, Service or key of its own; its trainer samples through the pool
    everything = pods(cp, ns)
    assert not [p for p in everything if p.startswith("first-inference")]
    assert cp.kubectl("get", "service", "first-vllm", "-n", ns, check=False).returncode != 0
    assert cond(first, "InferenceReady")["reason"] == "PoolReady" and first["status"]["inferencePool"] == "shared"
    config = json.loads(cp.get_json("configmap", "first-config", namespace=ns)["data"]["config.json"])["vllm"]
    assert config["base_url"] == f"http://shared-vllm.{ns}.svc.cluster.local:8000/v1"
    assert config["adapter_prefix"] == "first-" and config["adapter_dir"] == "/mnt/grpo/runs/first/adapters"
    trainer = everything["first-trainer-0"]
    (run,) = [v for v in trainer["spec"]["volumes"] if v["name"] == "run"]
    assert run["persistentVolumeClaim"]["claimName"] == "shared-adapters"
    env = {e["name"]: e for e in trainer["spec"]["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]

    # the adapters each attached job's trainer sees the server list under its names (its /progress: a fake one,
    # no trainer runs on a KWOK node) reach the job's status and, summed, the pool's
    trainers = FakeTrainers(int(operator.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    try:
        for job, versions in (("first", [1, 2]), ("second", [1])):
            loaded = [f"{job}-policy-v{v}" for v in versions]
            doc = Progress(job=job, step=max(versions), max_steps=500, loaded_adapters=loaded)
            trainers.set(job, **doc.model_dump(mode="json"))
        pool = wait_until(
            lambda: p if (p := get_pool(cp, ns))["status"].get("adaptersLoaded") == 3 else None,
            timeout=30,
            what="the pool's adaptersLoaded from its jobs' trainers",
        )
    finally:
        trainers.close()
    assert [(j["name"], j["adapters"]) for j in pool["status"]["jobs"]] == [("first", 2), ("second", 1)]
    assert get_job(cp, ns, "first")["status"]["loadedAdapters"] == ["first-policy-v1", "first-policy-v2"]
    row = cp.kubectl("get", "grpoinferencepools", "-n", ns).stdout.splitlines()[1].split()
    assert row[5:7] == ["8", "3"]  # USED, LOADED

    # a finished job returns its slots: the third attaches and its trainer starts
    exit_running_pod(cp, ns, "first-trainer-0", 0)
    wait_job(cp, ns, "first", is_true("Succeeded"), "first Succeeded=True")
    wait_job(cp, ns, "third", is_true("Training"), "third Training=True once first returned its slots", timeout=45)
    assert [j["name"] for j in get_pool(cp, ns)["status"]["jobs"]] == ["second", "third"]
    wait_event(cp, ns, "PoolFull", type="Warning")

    # refused at create by the chart's admission policies (tests/cluster/test_pool_admission.py has every case):
    # another namespace's pool, another base model; nothing is stored
    other_model = on_pool("othermodel")
    other_model["spec"]["model"] = {"name": "Qwen/Qwen2.5-0.5B-Instruct"}
    for doc, says in (
        (on_pool("elsewhere", pool="team-b/shared"), "a job uses only a pool of its own namespace"),
        (other_model, "spec.model.name is 'Qwen/Qwen2.5-0.5B-Instruct'"),
    ):
        assert says in wait_refused(cp, ns, doc)["message"]  # the policies are active
        status, body = create_job(cp, ns, doc)
        assert status == 422 and says in body["message"], body
    # left to the operator, which refuses before anything is created: a job naming a pool that does not exist
    # yet, then a pool of another base model created under that name after the job
    apply_jobs(cp, ns, on_pool("nopool", pool="nope"), secret=False)
    for reason, says in (
        ("PoolNotFound", "GRPOInferencePool 'nope' does not exist"),
        ("PoolMismatch", "spec.model.name is 'Qwen/Qwen2.5-1.5B-Instruct', the pool's is 'Qwen/Qwen2.5-0.5B-Instruct'"),
    ):
        if reason == "PoolMismatch":
            cp.apply_yaml(yaml.safe_dump(pool_manifest("nope", model=other_model["spec"]["model"], replicas=0)), ns)
        job = wait_job(cp, ns, "nopool", lambda j, r=reason: cond(j, "Created").get("reason") == r, f"nopool {reason}")
        assert says in cond(job, "Created")["message"]
        assert not [p for p in pods(cp, ns) if p.startswith("nopool-")]
        assert cp.kubectl("get", "configmap", "nopool-config", "-n", ns, check=False).returncode != 0
    assert [j["name"] for j in get_pool(cp, ns)["status"]["jobs"]] == ["second", "third"]  # they hold nothing

    # the pool's series on the operator's /metrics
    metrics = wait_until(
        lambda: t if f'grpo_pool_jobs_attached{{namespace="{ns}",pool="shared"}} 2.0' in (t := operator.metrics()) else None,
        timeout=15,
        what="the pool's series",
    )
    assert f'grpo_pool_adapter_slots_used{{namespace="{ns}",pool="shared"}} 8.0' in metrics
    assert f'grpo_pool_adapters_loaded{{namespace="{ns}",pool="shared"}} 1.0' in metrics  # second's; third's none


def test_deleting_a_pool_is_reported_on_its_running_job_and_keeps_the_volume_and_a_new_pool_resumes_it(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    cp, ns = control_plane, job_ns
    cp.apply_yaml(yaml.safe_dump(pool_manifest()), ns)
    apply_jobs(cp, ns, on_pool("papillon"))
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    old_uid = get_pool(cp, ns)["metadata"]["uid"]
    assert pods(cp, ns)["papillon-trainer-0"]["metadata"]["annotations"]["grpo.dev/inference-pool-uid"] == old_uid
    cp.kubectl("delete", "grpoinferencepool", "shared", "-n", ns, "--wait=true", "--timeout=30s")
    job = wait_job(cp, ns, "papillon", lambda j: cond(j, "InferenceReady").get("reason") == "PoolNotFound", "PoolNotFound")
    assert "create it" in cond(job, "InferenceReady")["message"]
    assert "papillon-trainer-0" in pods(cp, ns)  # the trainer waits for the pool; it is not failed
    assert cp.kubectl("get", "pvc", "shared-adapters", "-n", ns, check=False).returncode == 0
    assert get_job(cp, ns, "papillon")["status"]["inferencePool"] == "shared"

    # created again under the name: a new uid, a new key. The trainer holds the old one (refused by the new
    # server): it is replaced as an interruption, and its next attempt reads the new pool's key.
    cp.apply_yaml(yaml.safe_dump(pool_manifest()), ns)
    uid = get_pool(cp, ns)["metadata"]["uid"]
    job = wait_job(
        cp, ns, "papillon",
        lambda j: j["status"].get("trainerPod") == "papillon-trainer-1" and is_true("Training")(j),
        "the trainer resumed as papillon-trainer-1 on the new pool",
    )  # fmt: skip
    assert (job["status"]["interruptions"], job["status"]["restarts"]) == (1, 0)  # backoffLimit not spent
    everything = pods(cp, ns)
    assert "papillon-trainer-0" not in everything
    trainer = everything["papillon-trainer-1"]
    assert trainer["metadata"]["annotations"]["grpo.dev/inference-pool-uid"] == uid != old_uid
    env = {e["name"]: e for e in trainer["spec"]["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == f"shared-vllm-key-{uid[:8]}"
    (recreated,) = wait_event(cp, ns, "PoolRecreated")
    assert recreated["type"] == "Warning" and "GRPOInferencePool shared was deleted and created" in recreated["message"]


def test_a_pool_serves_a_succeeded_jobs_result_in_one_slot_until_serve_is_turned_off(
    control_plane: ControlPlane, job_ns: str, operator: OperatorProcess
):
    """spec.serve on a job that trained on a pool: once it succeeds the pool serves its result under the job's
    name (one slot; listed in the pool's ConfigMap for its servers), the job's endpoint is the pool's Service and
    key; serve turned off returns the slot and takes the result off the list. Fakes: KWOK pods (nothing runs in
    them) and a fake trainer's /progress reporting the result; a server answering for a listed result is
    tests/trainer/test_adapters_vllm.py's."""
    cp, ns = control_plane, job_ns
    cp.apply_yaml(yaml.safe_dump(pool_manifest()), ns)
    apply_jobs(cp, ns, on_pool("papillon", serve={"enabled": True}))
    wait_job(cp, ns, "papillon", is_true("Training"), "Training=True")
    trainers = FakeTrainers(int(operator.env["GRPO_TRAINER_PORT"]), trainer_of_ip(cp, ns))
    try:
        result = RunResult(path="result", adapter="result/adapter", step=3, val_score=0.7, base_model=POOL_MODEL["name"])
        trainers.set("papillon", **Progress(job="papillon", step=3, max_steps=500, result=result).model_dump(mode="json"))
        wait_job(cp, ns, "papillon", lambda j: (j["status"].get("result") or {}).get("adapter"), "the result reported")
    finally:
        trainers.close()
    exit_running_pod(cp, ns, "papillon-trainer-0", 0)
    job = wait_job(
        cp, ns, "papillon", lambda j: is_true("Succeeded")(j) and is_true("InferenceReady")(j), "Succeeded, served"
    )
    pool = get_pool(cp, ns)
    assert cond(job, "InferenceReady")["reason"] == "Serving"
    assert job["status"]["endpoint"] == {
        "url": f"http://shared-vllm.{ns}.svc.cluster.local:8000/v1", "model": "papillon",
        "apiKeySecretRef": pool["status"]["endpoint"]["apiKeySecretRef"],
    }  # fmt: skip
    assert job["status"]["inferencePod"] == "shared-vllm-0"  # where load() and grpo port-forward to
    assert not [p for p in pods(cp, ns) if p.startswith("papillon-inference")]
    pool = wait_until(
        lambda: p if (p := get_pool(cp, ns))["status"].get("slotsUsed") == 1 else None,
        timeout=30, what="the result's one slot",
    )  # fmt: skip
    assert pool["status"]["jobs"] == [{"name": "papillon", "slots": 1, "serving": True}]
    assert pool["status"]["resultsServed"] == 1
    # the namespace's pods, the result's clients, are admitted (with the pool's key)
    serve = cp.get_json("networkpolicy", "shared-serve", namespace=ns)
    assert serve["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    assert serve["metadata"]["ownerReferences"][0]["uid"] == pool["metadata"]["uid"]

    # the list the servers resolve results from (whenever they start): in the folder of their guard
    assert served_list(cp, ns) == {"papillon": "/mnt/grpo/runs/papillon/result/adapter"}
    env = {e["name"]: e.get("value") for e in pods(cp, ns)["shared-vllm-0"]["spec"]["containers"][0]["env"]}
    assert env["GRPO_SERVED_RESULTS"] == "/etc/grpo-vllm/served-results.json"

    cp.kubectl("patch", "grpojob", "papillon", "-n", ns, "--type=merge", "-p", '{"spec":{"serve":{"enabled":false}}}')
    wait_job(cp, ns, "papillon", lambda j: "endpoint" not in j["status"], "no endpoint")
    pool = wait_until(
        lambda: p if (p := get_pool(cp, ns))["status"].get("jobs") == [] else None, timeout=30, what="the slot returned"
    )
    assert pool["status"]["slotsUsed"] == 0 and served_list(cp, ns) == {}
