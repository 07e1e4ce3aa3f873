"""Inference pools without a cluster: a pool rendered into its servers, the pool's slot accounting, and a job
on a pool (no vLLM pod of its own, its trainer pointed at the pool, refused with the fix when it may not use
it). The same rules against a real API server: tests/cluster/test_pool_e2e.py."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
import yaml

from grpo_operator import children
from grpo_operator.api import parse_job
from grpo_operator.api.pool import GRPOInferencePoolStatus, parse_pool
from grpo_operator.api.status import GRPOJobStatus
from grpo_operator.controller.conditions import now_utc, pod_view
from grpo_operator.controller.lifecycle import Plan, decide
from grpo_operator.controller.pool_lifecycle import JobOnPool, PoolObserved, decide_pool
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.local.default import default_job
from grpo_operator.local.plan import InvalidInput, RunOptions, make_plan, make_pool_plan
from grpo_trainer.contract.vllm_command import vllm_command
from grpo_trainer.vllm.adapters import version_name, version_step
from support.jobdocs import load_example
from support.jobstates import SETTINGS, a_pod, cond, created_names, observe, spec
from support.local_pool import on_pool, pool_manifest
from support.vllm import free_port

MODEL = {"name": "Qwen/Qwen2.5-1.5B-Instruct"}  # the example job's
POOL_DOC: dict[str, Any] = {
    "apiVersion": "grpo.dev/v1alpha1",
    "kind": "GRPOInferencePool",
    "metadata": {"name": "shared", "namespace": "ns", "uid": "pool-uid-0001"},
    "spec": {"model": MODEL, "maxLoras": 4, "maxCpuLoras": 8},
}


def a_pool(**spec_changes: Any) -> children.Pool:
    doc = copy.deepcopy(POOL_DOC)
    doc["spec"].update(spec_changes)
    return children.Pool("shared", "ns", "pool-uid-0001", parse_pool(doc).spec)


def pool_observed(jobs: tuple[JobOnPool, ...] = (), pods: tuple = (), status: dict | None = None, **kw: Any):
    pool = kw.pop("pool", None) or a_pool()
    return PoolObserved(
        name=pool.name, namespace="ns", uid=pool.uid, generation=1, spec=pool.spec, spec_error=None,
        status=status or {}, found=kw.pop("found", frozenset()), key_secret_exists=kw.pop("key", False),
        config_map_data=kw.pop("config_map_data", None),
        pods=tuple(pods), jobs=jobs, now=now_utc(), **kw,
    )  # fmt: skip


def on_job(name: str, second: int = 0, **kw: Any) -> JobOnPool:
    return JobOnPool(name, f"2026-11-25T12:00:{second:02d}Z", kw.pop("slots", 4), **{"finished": False, "refused": False, **kw})


def pool_body(plan: Plan | None = None, **spec_changes: Any) -> dict[str, Any]:
    """The pool object a job's reconcile reads, with the status the pool's reconcile wrote."""
    doc = copy.deepcopy(POOL_DOC)
    doc["spec"].update(spec_changes)
    doc["status"] = plan.status if plan is not None else {}
    return doc


# --------------------------------------------------------------------------------------- rendering


def test_a_pool_renders_the_jobs_vllm_server_with_its_slots_rank_and_key():
    pool = a_pool(maxLoraRank=32)
    pod = children.pool_pod(pool, SETTINGS, 0)
    (container,) = pod["spec"]["containers"]
    argv = container["command"]
    flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    assert (flag("--max-loras"), flag("--max-cpu-loras"), flag("--max-lora-rank")) == ("4", "8", "32")
    assert flag("--served-model-name") == MODEL["name"] and "--middleware" in argv  # the key guard
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "shared-vllm-key-pool-uid", "key": "api-key"}
    # the same container as a job's own vLLM pod: one builder
    job_pod = children.inference_pod(children.Job("papillon", "ns", "uid", spec()), SETTINGS, 0)
    assert sorted(container) == sorted(job_pod["spec"]["containers"][0])
    assert vllm_command(children.resolved(children.Job("papillon", "ns", "uid", spec()), SETTINGS).vllm).argv[:3] == argv[:3]
    # the whole claim (every attached job's runs/<job>), owned by nobody: deleting the pool keeps the runs
    (run,) = [m for m in container["volumeMounts"] if m["name"] == "run"]
    assert run == {"name": "run", "mountPath": "/mnt/grpo"}
    made = {m["kind"]: m for m in children.pool_children(pool, SETTINGS, "k")}
    assert "ownerReferences" not in made["PersistentVolumeClaim"]["metadata"]
    assert made["Service"]["spec"]["selector"] == {"grpo.dev/pool": "shared", "app.kubernetes.io/component": "inference"}
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "GRPOInferencePool"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and not pod["spec"]["automountServiceAccountToken"]


def test_a_pools_network_policy_admits_the_trainers_of_its_jobs():
    settings = SETTINGS.model_copy(
        update={"network_policies": True, "operator_namespace": "grpo-system", "operator_pod_labels": {"a": "b"}}
    )
    made = {m["kind"]: m for m in children.pool_children(a_pool(), settings, None)}
    assert "Secret" not in made  # exists: not made again
    ingress = made["NetworkPolicy"]["spec"]["ingress"]
    assert ingress[0]["from"] == [{"podSelector": {"matchLabels": {"grpo.dev/inference-pool": "shared"}}}]


# --------------------------------------------------------------------------------------- the pool's reconcile


def test_a_new_pool_creates_its_children_then_its_server():
    plan = decide_pool(pool_observed(), SETTINGS)
    assert created_names(plan) == [
        "PersistentVolumeClaim/shared-adapters",
        "ConfigMap/shared-config",
        "Secret/shared-vllm-key-pool-uid",
        "Service/shared-vllm",
        "Pod/shared-vllm-0",
    ]
    assert cond(plan, "Ready")["status"] == "False" and plan.status["readyReplicas"] == 0
    assert plan.status["endpoint"]["url"] == "http://shared-vllm.ns.svc.cluster.local:8000/v1"
    GRPOInferencePoolStatus.model_validate(plan.status)  # everything written is declared in the CRD


def test_slots_go_to_the_oldest_jobs_and_the_rest_wait_with_a_condition_naming_the_fix():
    jobs = (on_job("c", 3), on_job("a", 1), on_job("b", 2))
    plan = decide_pool(pool_observed(jobs, pods=(a_pod("shared-vllm-0", "inference"),)), SETTINGS)
    assert plan.status["jobs"] == [{"name": "a", "slots": 4, "adapters": 0}, {"name": "b", "slots": 4, "adapters": 0}]
    assert plan.status["waiting"] == ["c"] and plan.status["slotsUsed"] == 8
    full = cond(plan, "SlotsAvailable")
    assert (full["status"], full["reason"]) == ("False", "PoolFull") and "raise maxCpuLoras" in full["message"]
    assert any(t.reason == "PoolFull" and t.warning for t in plan.transitions)  # a Warning Event on the pool
    assert cond(plan, "Ready")["status"] == "True" and plan.status["readyReplicas"] == 1


def test_an_attached_job_keeps_its_slots_and_a_finished_one_returns_them():
    before = {"jobs": [{"name": "late", "slots": 4}]}
    early = on_job("early", 0)
    plan = decide_pool(pool_observed((early, on_job("late", 9), on_job("x", 5)), status=before), SETTINGS)
    assert [j["name"] for j in plan.status["jobs"]] == ["late", "early"] and plan.status["waiting"] == ["x"]
    done = decide_pool(pool_observed((early, on_job("late", 9, finished=True), on_job("x", 5)), status=plan.status), SETTINGS)
    assert [j["name"] for j in done.status["jobs"]] == ["early", "x"] and done.status["waiting"] == []
    mismatched = decide_pool(pool_observed((on_job("other", 1, refused=True),)), SETTINGS)
    assert mismatched.status["jobs"] == [] and mismatched.status["slotsUsed"] == 0


def test_the_pool_counts_the_adapters_its_attached_jobs_trainers_see_it_serve():
    """adaptersLoaded: what each attached job's trainer last saw the server list under its names (its
    status.loadedAdapters); a job waiting for slots has nothing loaded to count, a finished one is not attached."""
    jobs = (on_job("a", 1, adapters=2), on_job("b", 2, adapters=3), on_job("c", 3, adapters=1),
            on_job("done", 0, adapters=3, finished=True))  # fmt: skip
    plan = decide_pool(pool_observed(jobs, pods=(a_pod("shared-vllm-0", "inference"),)), SETTINGS)
    assert plan.status["waiting"] == ["c"] and plan.status["adaptersLoaded"] == 5
    assert [(j["name"], j["adapters"]) for j in plan.status["jobs"]] == [("a", 2), ("b", 3)]
    GRPOInferencePoolStatus.model_validate(plan.status)
    metrics = OperatorMetrics()
    metrics.update_pool("ns", "shared", plan.status)
    assert metrics.registry.get_sample_value("grpo_pool_adapters_loaded", {"namespace": "ns", "pool": "shared"}) == 5


def test_a_lost_server_is_deleted_and_made_again_without_touching_the_jobs():
    lost = a_pod("shared-vllm-0", "inference", "Failed", ready=False, reason="Evicted", message="node low on memory")
    plan = decide_pool(pool_observed((on_job("a"),), pods=(lost,), found=frozenset()), SETTINGS)
    assert plan.delete_pods == ["shared-vllm-0"]
    assert any(e.reason == "ServerFailed" for e in plan.events)
    assert [j["name"] for j in plan.status["jobs"]] == ["a"]  # the job keeps its slots; it waits and re-serves


# --------------------------------------------------------------------------------------- a job on a pool


def pool_spec_job(**inference: Any):
    return spec(inference={"pool": "shared", **inference})


def attached(*names: str) -> Plan:
    return decide_pool(pool_observed(tuple(on_job(n, i) for i, n in enumerate(names)), pods=(a_pod("shared-vllm-0", "inference"),)), SETTINGS)


def test_a_job_on_a_pool_has_no_vllm_pod_and_its_trainer_uses_the_pools_service_key_and_volume():
    plan = decide(observe(job_spec=pool_spec_job(), pool=pool_body(attached("papillon")), config_map_data=None,
                          pvc_exists=False, service_exists=False, key_secret_exists=False), SETTINGS)  # fmt: skip
    assert created_names(plan) == ["ConfigMap/papillon-config", "Pod/papillon-trainer-0"]  # no volume, Service, key, vLLM
    assert cond(plan, "InferenceReady")["reason"] == "PoolReady" and plan.status["inferencePool"] == "shared"
    assert "inferencePod" not in plan.status
    run_config = json.loads(plan.create[0]["data"]["config.json"])
    config = run_config["vllm"]
    # job.json's owner check on the pool's volume: a refusal names the folder and a way out a pool job has
    owner = run_config["owner"]
    assert owner["where"] == "folder runs/papillon of claim 'shared-adapters'"
    assert owner["fix"].startswith("Rename the job") and "existingClaim" not in owner["fix"]
    assert config["base_url"] == "http://shared-vllm.ns.svc.cluster.local:8000/v1"
    assert config["adapter_prefix"] == "papillon-"  # papillon-policy-vN: unique among the pool's jobs
    assert config["adapter_dir"] == "/mnt/grpo/runs/papillon/adapters"  # where the pool's servers see it
    trainer = plan.create[1]
    assert trainer["metadata"]["labels"]["grpo.dev/inference-pool"] == "shared"  # what the pool's policy admits
    (run,) = [v for v in trainer["spec"]["volumes"] if v["name"] == "run"]
    assert run["persistentVolumeClaim"]["claimName"] == "shared-adapters"
    env = {e["name"]: e for e in trainer["spec"]["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "shared-vllm-key-pool-uid"
    # ReadWriteOnce: the trainer goes to the pool's node
    term = trainer["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"] == {"grpo.dev/pool": "shared", "app.kubernetes.io/component": "inference"}
    GRPOJobStatus.model_validate(plan.status)


def test_a_job_waits_for_slots_without_a_trainer_and_says_so():
    plan = decide(observe(job_spec=pool_spec_job(), pool=pool_body(attached("a", "b", "papillon"))), SETTINGS)
    assert not [m for m in plan.create if m["kind"] == "Pod"]
    training = cond(plan, "Training")
    assert training["reason"] == "PoolFull" and "held by a, b" in training["message"]
    assert any(t.reason == "PoolFull" and t.warning for t in plan.transitions)  # a Warning Event on the job


def refusal(plan: Plan) -> dict:
    assert plan.create == [], created_names(plan)  # nothing half-created
    return cond(plan, "Created")


def test_a_pool_of_another_namespace_is_refused_naming_the_fix():
    created = refusal(decide(observe(job_spec=pool_spec_job(pool="team-b/shared"), config_map_data=None), SETTINGS))
    assert created["reason"] == "PoolInAnotherNamespace" and "a job uses only a pool of its own namespace" in created["message"]


def test_a_missing_pool_is_refused_naming_the_fix():
    created = refusal(decide(observe(job_spec=pool_spec_job(), config_map_data=None), SETTINGS))
    assert created["reason"] == "PoolNotFound" and "create it" in created["message"]


def test_a_pool_of_another_base_model_or_a_smaller_rank_is_refused():
    other = decide(observe(job_spec=pool_spec_job(), pool=pool_body(model={"name": "other/model"}), config_map_data=None), SETTINGS)
    created = refusal(other)
    assert created["reason"] == "PoolMismatch" and "spec.model.name is 'Qwen/Qwen2.5-1.5B-Instruct'" in created["message"]
    doc = load_example()
    doc["spec"]["inference"] = {"pool": "shared"}
    doc["spec"]["trainKwargs"]["lora_config"]["r"] = 32
    ranked = parse_job(doc).spec
    created = refusal(decide(observe(job_spec=ranked, pool=pool_body(maxLoraRank=16), config_map_data=None), SETTINGS))
    assert "above the pool's maxLoraRank 16" in created["message"]


def test_the_export_pod_of_a_job_on_a_pool_reads_its_folder_of_the_pools_volume_on_the_servers_node():
    """The pool's server holds the pool's ReadWriteOnce claim for as long as the pool lives: the export pod of a
    finished job on it must go to the server's node (it would not mount the claim elsewhere)."""
    doc = load_example()
    doc["spec"]["inference"] = {"pool": "shared"}
    doc["spec"]["export"] = {"destinations": [{"claim": {"claimName": "models"}}]}
    job_spec = parse_job(doc).spec
    for mode, joins in (("ReadWriteOnce", True), ("ReadWriteMany", False)):
        pool = a_pool(storage={"accessMode": mode})
        job = children.Job("papillon", "ns", "uid-1", job_spec, pool=children.binding("shared", pool.uid, pool.spec))
        pod = children.export_pod(job, SETTINGS, 0, [0], join_inference=False)
        (run,) = [v for v in pod["spec"]["volumes"] if v["name"] == "run"]
        assert run["persistentVolumeClaim"]["claimName"] == "shared-adapters"
        (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "run"]
        assert mount["subPath"] == "runs/papillon" and mount["readOnly"] is True
        if joins:
            (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert term["labelSelector"]["matchLabels"] == {"grpo.dev/pool": "shared", "app.kubernetes.io/component": "inference"}
        else:
            assert "affinity" not in pod["spec"]


def test_a_deleted_pool_is_reported_on_its_running_job_which_keeps_its_trainer():
    running = (a_pod("papillon-trainer-0", "trainer"),)
    plan = decide(observe(job_spec=pool_spec_job(), pods=running), SETTINGS)
    assert plan.delete_pods == [] and cond(plan, "InferenceReady")["reason"] == "PoolNotFound"


def test_adapter_names_carry_the_jobs_prefix_and_other_jobs_names_are_not_its_own():
    assert version_name(3, "a-") == "a-policy-v3" and version_step("a-policy-v3", "a-") == 3
    assert version_step("b-policy-v3", "a-") is None and version_step("a-policy-v3-policy-v1", "a-") is None
    assert version_step("policy-v3") == 3 and version_step("a-policy-v3") is None


def test_grpo_local_refuses_a_job_on_a_pool_with_the_way_out(tmp_path):
    doc = load_example()
    doc["spec"]["inference"] = {"pool": "shared"}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        InvalidInput, match=r"spec\.inference\.pool: 'shared' names a GRPOInferencePool.*--pool POOL\.yaml.*remove spec\.inference\.pool"
    ):
        make_plan(RunOptions(job_file=job, run_dir=tmp_path / "run"), ports=False)


def local_pool_files(tmp_path, *names: str, jobs: int = 2, **pool_spec: Any):
    """A pool file of the embedded default's model (a stand-in folder) and a job file per name that names it."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    job = default_job(model)
    pool = pool_manifest("tiny", job, jobs)
    pool["spec"].update(pool_spec)
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(pool))
    files = []
    for i, name in enumerate(names):
        f = tmp_path / f"{name}-{i}.yaml"
        f.write_text(yaml.safe_dump(on_pool(job, name, "tiny")))
        files.append(f)
    return pool_file, files


def test_grpo_local_pool_renders_each_job_as_the_operator_renders_a_job_on_that_pool(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pool_file, files = local_pool_files(tmp_path, "job-a", "job-b")
    port = free_port()
    plan = make_pool_plan(pool_file, tuple(RunOptions(job_file=f, trainer_port=0) for f in files), port=port)
    argv = vllm_command(plan.pool.server).argv
    assert argv[argv.index("--max-cpu-loras") + 1] == "8" and argv[argv.index("--max-lora-rank") + 1] == "8"
    assert argv[argv.index("--port") + 1] == str(port) and argv[argv.index("--host") + 1] == "127.0.0.1"
    key = plan.pool.secret_env
    for name, job_plan in zip(("job-a", "job-b"), plan.jobs):
        assert job_plan.run_dir == tmp_path / "runs" / name
        assert job_plan.vllm == plan.pool.server and job_plan.secret_env == key
        # what the operator renders into the trainer pod of the same job on the same pool
        doc = yaml.safe_load(files[0 if name == "job-a" else 1].read_text())
        job = children.Job(name, "ns", "uid", parse_job(doc).spec, pool=children.binding("tiny", "u", a_pool().spec))
        cluster = children.resolved(job, SETTINGS).config.vllm
        local = job_plan.config.vllm
        assert local.adapter_prefix == cluster.adapter_prefix == f"{name}-"
        assert local.max_loras == cluster.max_loras and local.served_model_name == cluster.served_model_name
        assert local.base_url == f"http://127.0.0.1:{port}/v1"
        assert local.adapter_dir == f"{tmp_path}/runs/{name}/adapters"
    again = make_pool_plan(pool_file, tuple(RunOptions(job_file=f, trainer_port=0) for f in files), port=port)
    assert again.pool.secret_env != key  # a key per run


@pytest.mark.parametrize(
    ("names", "pool_spec", "edit", "message"),
    [
        (("job-a",), {"maxLoraRank": 8}, {"r": 16}, r"job 'job-a': PoolMismatch: .*lora_config\.r is 16, above the pool's maxLoraRank 8"),
        (("job-a",), {}, {"pool": "other/tiny"}, r"PoolInAnotherNamespace: .*namespace 'other'"),
        (("job-a",), {}, {"pool": "elsewhere"}, r"PoolNotFound: GRPOInferencePool 'elsewhere' does not exist.*pool file is GRPOInferencePool default/tiny"),
        (("job-a",), {}, {"pool": None}, r"job 'job-a': spec\.inference\.pool is not set; set it to 'tiny'"),
        (("job-a", "job-b", "job-c"), {}, {}, r"8 adapter slots \(maxCpuLoras\) and its jobs take 12: job-c would wait.*raise spec\.maxCpuLoras to 12"),
        (("job-a", "job-a"), {}, {}, r"jobs job-a are given twice"),
        (("job-a",), {"replicas": 0}, {}, r"spec\.replicas is 0"),
    ],
)
def test_grpo_local_pool_refuses_what_the_operator_refuses_before_anything_starts(
    tmp_path, monkeypatch, names, pool_spec, edit, message
):
    monkeypatch.chdir(tmp_path)
    pool_file, files = local_pool_files(tmp_path, *names, **pool_spec)
    doc = yaml.safe_load(files[0].read_text())
    if "r" in edit:
        doc["spec"]["trainKwargs"]["lora_config"]["r"] = edit["r"]
    if "pool" in edit:
        doc["spec"]["inference"]["pool"] = edit["pool"]
    files[0].write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidInput, match=message):
        make_pool_plan(pool_file, tuple(RunOptions(job_file=f, trainer_port=0) for f in files), port=free_port())
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pools").exists()


def trainer_made_for(pool_uid: str, attempt: int = 0, phase: str = "Running", **status: Any):
    """The job's trainer pod as rendered for the pool ``shared`` of uid ``pool_uid``, as the API server reports it."""
    pool = a_pool()
    job = children.Job("papillon", "ns", "uid", pool_spec_job(), pool=children.binding("shared", pool_uid, pool.spec))
    manifest = children.trainer_pod(job, SETTINGS, attempt)
    manifest["status"] = {"phase": phase, **status}
    return pod_view(manifest)


def test_a_trainer_made_for_an_earlier_pool_of_the_name_is_replaced_as_an_interruption():
    """The pool was deleted and created again under its name: a new uid, a new key. The running trainer holds the
    old one (every request refused): it is stopped and resumes from its checkpoint, backoffLimit not spent; the next
    attempt starts only once the old one has stopped (never two trainers on one run directory)."""
    pool = pool_body(attached("papillon"))
    old = trainer_made_for("old-pool-uid")
    assert old.pool_uid == "old-pool-uid"  # the renderer records it; pod_view reads it back
    plan = decide(observe(status={"restarts": 0, "interruptions": 0}, job_spec=pool_spec_job(), pool=pool, pods=(old,)), SETTINGS)
    assert plan.delete_pods == ["papillon-trainer-0"] and not [m for m in plan.create if m["kind"] == "Pod"]
    assert (plan.status["interruptions"], plan.status["restarts"], plan.status["trainerPod"]) == (1, 0, "papillon-trainer-1")
    training = cond(plan, "Training")
    assert training["reason"] == "TrainerRestarting" and "GRPOInferencePool shared was deleted and created again" in training["message"]
    (event,) = [e for e in plan.events if e.reason == "PoolRecreated"]
    assert event.type == "Warning" and "not counted against backoffLimit" in event.message
    assert not [t for t in plan.transitions if t.reason == "PoolRecreated"]  # one Event of that reason

    # while it stops, no second trainer
    stopping = replace(old, deleting=True)
    waiting = decide(observe(status=plan.status, job_spec=pool_spec_job(), pool=pool, pods=(stopping,)), SETTINGS)
    assert not [m for m in waiting.create if m["kind"] == "Pod"] and waiting.delete_pods == []
    assert cond(waiting, "Training")["reason"] == "Terminating" and waiting.status["interruptions"] == 1

    # once it has gone, the next attempt, made for the pool found now (its key)
    resumed = decide(observe(status=plan.status, job_spec=pool_spec_job(), pool=pool), SETTINGS)
    (trainer,) = [m for m in resumed.create if m["kind"] == "Pod"]
    assert trainer["metadata"]["name"] == "papillon-trainer-1"
    assert trainer["metadata"]["annotations"]["grpo.dev/inference-pool-uid"] == "pool-uid-0001"
    env = {e["name"]: e for e in trainer["spec"]["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "shared-vllm-key-pool-uid"

    # a trainer made for the pool found now is left alone
    current = decide(observe(job_spec=pool_spec_job(), pool=pool, pods=(trainer_made_for("pool-uid-0001"),)), SETTINGS)
    assert current.delete_pods == [] and cond(current, "Training")["reason"] == "Running"


def test_a_trainer_the_new_pool_refused_resumes_without_spending_a_restart():
    """The old trainer met the new pool first: HTTP 401, it failed. Not a failure of the job's."""
    refused = trainer_made_for("old-pool-uid", phase="Failed")
    plan = decide(observe(status={"restarts": 0, "interruptions": 0}, job_spec=pool_spec_job(),
                          pool=pool_body(attached("papillon")), pods=(refused,)), SETTINGS)  # fmt: skip
    assert created_names(plan) == ["Pod/papillon-trainer-1"] and plan.delete_pods == ["papillon-trainer-0"]
    assert (plan.status["interruptions"], plan.status["restarts"]) == (1, 0)
    assert any(e.reason == "PoolRecreated" for e in plan.events) and cond(plan, "Training")["reason"] == "TrainerRestarting"


def test_a_trainer_that_stopped_while_its_pool_was_missing_waits_for_the_pool():
    """No next attempt without the pool: it would be rendered without the pool's key and volume."""
    failed = trainer_made_for("old-pool-uid", phase="Failed")
    plan = decide(observe(status={"restarts": 0, "interruptions": 0}, job_spec=pool_spec_job(), pods=(failed,)), SETTINGS)
    assert plan.create == [] and plan.delete_pods == [] and plan.status["restarts"] == 0
    training = cond(plan, "Training")
    assert training["reason"] == "PoolNotFound" and "the next attempt starts once the job may use its pool" in training["message"]
    assert cond(plan, "InferenceReady")["reason"] == "PoolNotFound"


# --------------------------------------------------------------------------------------- results served by a pool


SUCCEEDED_AT = "2026-11-25T12:00:00Z"
SUCCEEDED = [
    {"type": "Succeeded", "status": "True", "reason": "TrainerSucceeded", "message": "", "lastTransitionTime": SUCCEEDED_AT}
]
RESULT = {"path": "result", "adapter": "result/adapter", "step": 7, "valScore": 0.5}


def served_list(config_map: dict[str, Any]) -> dict[str, str]:
    return json.loads(config_map["data"]["served-results.json"])


def test_a_succeeded_job_that_serves_its_result_keeps_one_slot_and_the_pools_servers_list_it():
    """Serving a result costs one slot (its job trained with four), counted and listed as serving; the pool's
    ConfigMap lists it for its servers (under the job's name, from the job's folder of the pool's volume), which
    load it on its first request whenever they (re)start: their pods do not change with it."""
    before = {"jobs": [{"name": "done", "slots": 4}, {"name": "a", "slots": 4}]}
    jobs = (on_job("done", 0, finished=True, serving=True, adapters=3), on_job("a", 1, adapters=2), on_job("b", 2),
            on_job("c", 3))  # fmt: skip
    plan = decide_pool(pool_observed(jobs, status=before), SETTINGS)
    assert plan.status["jobs"] == [
        {"name": "done", "slots": 1, "serving": True},
        {"name": "a", "slots": 4, "adapters": 2},
    ]
    assert plan.status["slotsUsed"] == 5 and plan.status["waiting"] == ["b", "c"]  # 3 free: not enough for b
    assert plan.status["adaptersLoaded"] == 2  # what training jobs' trainers see; the result is a slot
    GRPOInferencePoolStatus.model_validate(plan.status)
    metrics = OperatorMetrics()
    metrics.update_pool("ns", "shared", plan.status)
    assert metrics.registry.get_sample_value("grpo_pool_results_served", {"namespace": "ns", "pool": "shared"}) == 1
    (config,) = [m for m in plan.create if m["kind"] == "ConfigMap"]
    assert served_list(config) == {"done": "/mnt/grpo/runs/done/result/adapter"}
    (server,) = [m for m in plan.create if m["kind"] == "Pod"]
    assert server == children.pool_pod(a_pool(), SETTINGS, 0)  # the same pod with or without results
    (container,) = server["spec"]["containers"]
    assert "--lora-modules" not in container["command"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GRPO_SERVED_RESULTS"] == "/etc/grpo-vllm/served-results.json"  # beside the guard, which reads it
    (guard,) = [v for v in server["spec"]["volumes"] if v["name"] == "guard"]
    assert [i["key"] for i in guard["configMap"]["items"]] == ["grpo_vllm_guard.py", "served-results.json"]
    assert [m for m in container["volumeMounts"] if m["name"] == "guard"][0].get("subPath") is None  # kept current
    # the result's slot goes when serve is turned off (or the job is deleted): b attaches, the list is emptied
    off = decide_pool(pool_observed((on_job("done", 0, finished=True), *jobs[1:]), status=plan.status,
                                    config_map_data=config["data"], found=frozenset({("ConfigMap", "shared-config")})),
                      SETTINGS)  # fmt: skip
    assert [j["name"] for j in off.status["jobs"]] == ["a", "b"] and off.status["waiting"] == ["c"]
    (replaced,) = off.replace
    assert served_list(replaced) == {} and not [m for m in off.create if m["kind"] == "ConfigMap"]
    same = decide_pool(pool_observed(jobs, status=plan.status, config_map_data=config["data"]), SETTINGS)
    assert same.replace == []  # unchanged: not written again


def test_a_result_waits_for_a_slot_when_the_pool_is_full_and_says_so():
    """serve.enabled turned on after the job finished, on a pool whose slots the training jobs hold."""
    jobs = (on_job("a", 1), on_job("b", 2), on_job("late", 0, finished=True, serving=True))
    plan = decide_pool(pool_observed(jobs, status={"jobs": [{"name": "a"}, {"name": "b"}]}), SETTINGS)
    assert plan.status["waiting"] == ["late"] and cond(plan, "SlotsAvailable")["reason"] == "PoolFull"
    (config,) = [m for m in plan.create if m["kind"] == "ConfigMap"]
    assert served_list(config) == {}  # not served while it waits


def test_a_pool_serving_a_result_admits_the_pods_of_its_namespace():
    settings = SETTINGS.model_copy(update={"network_policies": True})
    serving = (on_job("done", 0, finished=True, serving=True),)
    made = [m for m in decide_pool(pool_observed(serving), settings).create if m["kind"] == "NetworkPolicy"]
    assert [m["metadata"]["name"] for m in made] == ["shared-inference", "shared-serve"]
    assert made[1]["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]  # the namespace's pods (with the key)
    assert made[1]["spec"]["podSelector"]["matchLabels"]["grpo.dev/pool"] == "shared"
    training = [m for m in decide_pool(pool_observed((on_job("a"),)), settings).create if m["kind"] == "NetworkPolicy"]
    assert [m["metadata"]["name"] for m in training] == ["shared-inference"]  # only its trainers


def serving_job(pool: Plan | None, result: dict | None = None):
    """A succeeded job on the pool with serve.enabled, as its next reconcile sees it."""
    status = {"conditions": SUCCEEDED, "result": RESULT if result is None else result, "restarts": 0}
    job_spec = spec(inference={"pool": "shared"}, serve={"enabled": True})
    return observe(status=status, job_spec=job_spec, pool=pool_body(pool) if pool is not None else None,
                   pods=(a_pod("papillon-trainer-0", "trainer", "Succeeded", ready=False),))  # fmt: skip


def test_a_succeeded_job_on_a_pool_is_served_by_the_pool_under_its_name_with_the_pools_key():
    """No vLLM pod of its own: status.endpoint is the pool's Service, the job's name, the pool's key; the
    pool's server is the pod a port-forward (load(), grpo) reaches."""
    pool = decide_pool(pool_observed((on_job("papillon", 0, finished=True, serving=True),),
                                     pods=(a_pod("shared-vllm-0", "inference"),)), SETTINGS)  # fmt: skip
    plan = decide(serving_job(pool), SETTINGS)
    assert plan.create == [] and plan.delete_pods == []
    assert plan.status["endpoint"] == {
        "url": "http://shared-vllm.ns.svc.cluster.local:8000/v1",
        "model": "papillon",
        "apiKeySecretRef": {"name": "shared-vllm-key-pool-uid", "key": "api-key"},
    }
    ready = cond(plan, "InferenceReady")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert "GRPOInferencePool shared serves papillon" in ready["message"]
    assert plan.status["inferencePod"] == "shared-vllm-0"
    GRPOJobStatus.model_validate(plan.status)
    # the base model scored best: the pool's base model, no slot
    base = decide(serving_job(pool, result={"path": "result", "step": 0}), SETTINGS)
    assert base.status["endpoint"]["model"] == MODEL["name"] and cond(base, "InferenceReady")["reason"] == "Serving"


def test_a_result_the_pool_cannot_serve_is_reported_on_the_job():
    jobs = (on_job("a", 1), on_job("b", 2), on_job("papillon", 0, finished=True, serving=True))
    full = decide_pool(pool_observed(jobs, status={"jobs": [{"name": "a"}, {"name": "b"}]}), SETTINGS)
    plan = decide(serving_job(full), SETTINGS)
    waiting = cond(plan, "InferenceReady")
    assert (waiting["status"], waiting["reason"]) == ("False", "PoolFull")
    assert "raise the pool's maxCpuLoras" in waiting["message"]
    gone = decide(serving_job(None), SETTINGS)  # the pool was deleted: nothing serves the result
    assert cond(gone, "InferenceReady")["reason"] == "PoolNotFound" and "endpoint" not in gone.status
    was = serving_job(None)
    gone = decide(replace(was, status={**was.status, "endpoint": {"url": "u"}}), SETTINGS)
    assert gone.status["endpoint"] is None  # a merge patch's null removes the old one
