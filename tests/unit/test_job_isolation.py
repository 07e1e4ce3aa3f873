"""What keeps other pods off a job's vLLM and trainer: the job's own key (generated per job, read by
both pods from a Secret, asked for by vLLM's guard on every path but its probes) and the job's
NetworkPolicies. Rendering and decisions only; tests/trainer/test_adapters_vllm.py checks the guard
in a real vLLM, tests/cluster/test_operator_e2e.py the objects on a real API server."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.children import (
    Job,
    api_key_secret,
    config_map,
    inference_pod,
    network_policies,
    result_endpoint,
    serve_network_policy,
    trainer_pod,
)
from grpo_operator.controller.lifecycle import decide
from grpo_operator.local.plan import RunOptions, make_plan
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract import vllm_guard
from grpo_trainer.contract.config import TrainerConfig
from grpo_trainer.contract.vllm_command import GUARD_FILE, GUARD_MIDDLEWARE, guard_source, vllm_command
from support.jobdocs import load_example
from support.jobstates import T0, a_pod, cond, created_names, observe

JOB = Job("papillon", "team-a", "0c5e2a9f-1111-2222-3333-444455556666", parse_job(load_example()).spec)
KEY_SECRET = "papillon-vllm-key-0c5e2a9f"
NETWORKED = OperatorSettings(
    network_policies=True,
    operator_namespace="grpo-system",
    operator_pod_labels={"app.kubernetes.io/name": "grpo-operator", "app.kubernetes.io/instance": "grpo"},
    metrics_namespaces=("monitoring",),
)
SETTINGS = OperatorSettings()


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod)["env"]}


# --------------------------------------------------------------------------- the guard (vLLM's middleware)


KEY = "the-jobs-key-0123456789"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", KEY)


def call(path: str, method: str = "POST", key: str | None = None, kind: str = "http") -> int | None:
    """One request through the guard: the status (or websocket close code) it answered, None when it let it in."""
    passed: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {key}".encode())] if key is not None else []
    scope = {"type": kind, "path": path, "method": method, "headers": headers}
    asyncio.run(vllm_guard.RequireKey(app)(scope, receive, send))
    return None if passed else sent[0].get("status", sent[0].get("code"))


@pytest.mark.parametrize(
    "path",
    ["/v1/load_lora_adapter", "/adapters", "/invocations", "/v1/completions", "/tokenize", "/pause", "/v1/models"],
)
@pytest.mark.usefixtures("keyed")
def test_the_guard_refuses_every_path_without_the_key(path: str) -> None:
    """/adapters (a LoRA from any path under any name) and /invocations are what vLLM's own --api-key leaves open."""
    assert call(path) == 401
    assert call(path, key="not-the-key") == 401
    assert call(path, key=KEY) is None


@pytest.mark.usefixtures("keyed")
def test_the_guard_leaves_only_the_probes_open() -> None:
    for path in ("/health", "/metrics"):
        assert call(path, method="GET") is None  # the kubelet, Prometheus
        assert call(path, method="POST") == 401
    assert call("/healthz", method="GET") == 401
    assert call("/v1/realtime", kind="websocket") == 1008  # closed: policy violation
    assert call("/v1/realtime", kind="websocket", key=KEY) is None


def test_the_guard_without_a_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match=r"\$VLLM_API_KEY is unset"):
        vllm_guard.RequireKey(lambda *a: None)  # type: ignore[arg-type,return-value]


# --------------------------------------------------------------------------- the key in the job's pods


def test_both_pods_read_the_jobs_key_from_its_own_immutable_secret_never_a_literal() -> None:
    key = "k" * 43
    secret = api_key_secret(JOB, key)
    assert secret["metadata"]["name"] == KEY_SECRET  # the job's uid in the name: never an earlier job's key
    assert secret["immutable"] is True and secret["stringData"] == {"api-key": key}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    trainer, vllm = trainer_pod(JOB, SETTINGS, 0), inference_pod(JOB, SETTINGS, 0)
    for pod in (trainer, vllm):
        assert env(pod)["VLLM_API_KEY"] == {"secretKeyRef": {"name": KEY_SECRET, "key": "api-key"}}
    cm = config_map(JOB, SETTINGS)
    assert key not in json.dumps([trainer, vllm, cm])  # only the Secret holds it
    config = TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert config.vllm.api_key_env == "VLLM_API_KEY"  # the trainer's clients send it


def test_vllm_loads_its_guard_from_the_jobs_config_map() -> None:
    pod = inference_pod(JOB, SETTINGS, 0)
    argv = container(pod)["command"]
    assert argv[argv.index("--middleware") + 1] == GUARD_MIDDLEWARE == "grpo_vllm_guard.RequireKey"
    assert env(pod)["PYTHONPATH"] == "/etc/grpo-vllm"
    (mount,) = [m for m in container(pod)["volumeMounts"] if m["mountPath"] == "/etc/grpo-vllm"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True
    assert volume["configMap"] == {"name": "papillon-config", "items": [{"key": GUARD_FILE, "path": GUARD_FILE}]}
    assert config_map(JOB, SETTINGS)["data"][GUARD_FILE] == guard_source()
    compile(guard_source(), GUARD_FILE, "exec")  # the file vLLM imports is the tested module, whole


def test_the_served_endpoint_says_where_its_key_is() -> None:
    endpoint = result_endpoint(JOB, SETTINGS, adapter=True)
    assert endpoint["apiKeySecretRef"] == {"name": KEY_SECRET, "key": "api-key"}


def test_the_jobs_key_variable_and_the_guards_path_cannot_be_set_by_the_job() -> None:
    doc = copy.deepcopy(load_example())
    doc["spec"]["inference"] = {"env": [{"name": "VLLM_API_KEY", "value": "known"}]}
    with pytest.raises(InvalidJob, match=r"spec\.inference\.env\[0\]\.name: VLLM_API_KEY is set by the operator"):
        parse_job(doc)
    doc["spec"]["inference"] = {"env": [{"name": "PYTHONPATH", "value": "/mine"}]}
    with pytest.raises(InvalidJob, match=r"spec\.inference\.env: env may not set PYTHONPATH in the vLLM pod"):
        parse_job(doc)
    doc["spec"].pop("inference")
    doc["spec"]["trainer"] = {"env": [{"name": "PYTHONPATH", "value": "/mine"}]}
    parse_job(doc)  # the trainer's own


# --------------------------------------------------------------------------- NetworkPolicies


def ingress(policy: dict[str, Any]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    return [(rule["from"], rule["ports"]) for rule in policy["spec"]["ingress"]]


def test_no_policies_unless_the_operator_manages_them() -> None:
    assert network_policies(JOB, SETTINGS) == [] and serve_network_policy(JOB, SETTINGS) is None


def test_vllm_admits_its_trainer_and_the_trainer_the_operator_both_the_scrapers() -> None:
    vllm, trainer = network_policies(JOB, NETWORKED)
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert vllm["metadata"]["name"] == "papillon-inference" and vllm["kind"] == "NetworkPolicy"
    assert vllm["spec"]["podSelector"] == {
        "matchLabels": {"grpo.dev/job": "papillon", "app.kubernetes.io/component": "inference"}
    }
    assert vllm["spec"]["policyTypes"] == ["Ingress"]  # egress stays open: hubs, external LLMs
    port = [{"protocol": "TCP", "port": 8000}]
    trainer_pods = {"matchLabels": {"grpo.dev/job": "papillon", "app.kubernetes.io/component": "trainer"}}
    assert ingress(vllm) == [([{"podSelector": trainer_pods}], port), (scrapers, port)]
    assert trainer["spec"]["podSelector"] == trainer_pods
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "grpo-system"}},
        "podSelector": {"matchLabels": NETWORKED.operator_pod_labels},
    }
    trainer_port = [{"protocol": "TCP", "port": 9400}]
    assert ingress(trainer) == [([operator], trainer_port), (scrapers, trainer_port)]
    for policy in (vllm, trainer):
        assert policy["metadata"]["ownerReferences"][0]["uid"] == JOB.uid


def test_a_serving_job_opens_its_vllm_to_its_namespace_and_nothing_without_scrapers() -> None:
    serve = serve_network_policy(JOB, NETWORKED)
    assert serve is not None and serve["metadata"]["name"] == "papillon-serve"
    assert ingress(serve) == [([{"podSelector": {}}], [{"protocol": "TCP", "port": 8000}])]
    quiet = NETWORKED.model_copy(update={"metrics_namespaces": ()})
    assert all(len(p["spec"]["ingress"]) == 1 for p in network_policies(JOB, quiet))


def test_settings_read_where_the_operator_runs_and_refuse_policies_without_it() -> None:
    env = {
        "GRPO_NETWORK_POLICIES": "true",
        "GRPO_OPERATOR_NAMESPACE": "grpo-system",
        "GRPO_OPERATOR_POD_LABELS": "app.kubernetes.io/name=grpo-operator,app.kubernetes.io/instance=grpo",
        "GRPO_METRICS_NAMESPACES": "",
    }
    settings = OperatorSettings.from_env(env)
    assert settings.operator_pod_labels == NETWORKED.operator_pod_labels and settings.metrics_namespaces == ()
    with pytest.raises(ValueError, match="GRPO_NETWORK_POLICIES needs GRPO_OPERATOR_NAMESPACE"):
        OperatorSettings.from_env({"GRPO_NETWORK_POLICIES": "true"})


# --------------------------------------------------------------------------- the decisions


def test_a_new_job_gets_its_key_and_policies_before_its_pods() -> None:
    obs = observe(pvc_exists=False, config_map_data=None, service_exists=False, key_secret_exists=False)
    plan = decide(obs, NETWORKED)
    assert created_names(plan) == [
        "PersistentVolumeClaim/papillon-run",
        "ConfigMap/papillon-config",
        "Service/papillon-vllm",
        "Secret/papillon-vllm-key-uid",
        "NetworkPolicy/papillon-inference",
        "NetworkPolicy/papillon-trainer",
        "Pod/papillon-inference-0",
        "Pod/papillon-trainer-0",
    ]
    (secret,) = [m for m in plan.create if m["kind"] == "Secret"]
    assert secret["stringData"]["api-key"] == obs.new_api_key and len(obs.new_api_key) >= 43  # 256 bits
    assert obs.new_api_key not in repr(obs)
    assert observe().new_api_key != obs.new_api_key  # one per job
    found = frozenset({"papillon-inference", "papillon-trainer"})
    again = decide(observe(network_policies_found=found, pods=(a_pod("papillon-trainer-0", "trainer"),)), NETWORKED)
    assert not [m for m in again.create if m["kind"] in ("Secret", "NetworkPolicy")]


def test_a_job_that_succeeds_and_serves_in_one_pass_creates_its_key_once_and_opens_to_its_namespace() -> None:
    pods = (a_pod("papillon-trainer-0", "trainer", phase="Succeeded"), a_pod("papillon-inference-0", "inference"))
    found = frozenset({"papillon-inference", "papillon-trainer"})
    job_spec = parse_job({**load_example(), "spec": {**load_example()["spec"], "serve": {"enabled": True}}}).spec
    first = observe(pods=pods, job_spec=job_spec, key_secret_exists=False, network_policies_found=found)
    plan = decide(first, NETWORKED)
    assert created_names(plan) == ["Secret/papillon-vllm-key-uid", "NetworkPolicy/papillon-serve"]
    assert cond(plan, "InferenceReady")["reason"] == "Serving"
    assert plan.status["endpoint"]["apiKeySecretRef"] == {"name": "papillon-vllm-key-uid", "key": "api-key"}
    found |= {"papillon-serve"}
    later = observe(status=plan.status, pods=pods, job_spec=job_spec, now=T0, network_policies_found=found)
    assert decide(later, NETWORKED).create == []


def test_a_local_run_makes_its_own_key_for_both_processes_and_writes_it_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPO_UNTRUSTED_API_KEY", "sk-untrusted")
    monkeypatch.setenv("GRPO_JUDGE_API_KEY", "sk-judge")
    job = tmp_path / "papillon.yaml"
    job.write_text(yaml.safe_dump(load_example()))
    first, second = (make_plan(RunOptions(job_file=job, run_dir=tmp_path / "run"), ports=False) for _ in range(2))
    key = first.secret_env["VLLM_API_KEY"]
    assert len(key) >= 43 and key != second.secret_env["VLLM_API_KEY"]  # one per run
    assert first.config.vllm.api_key_env == "VLLM_API_KEY"
    server = vllm_command(first.vllm)
    written = [first.config.to_json(), *server.argv, json.dumps(server.env), *first.trainer_argv]
    written.append(json.dumps(first.trainer_env))
    assert not any(key in text for text in written) and key not in repr(first)
    assert all(key.encode() not in data for data in first.job_files.values())
    guard = tmp_path / "run" / "vllm-guard" / GUARD_FILE
    assert first.job_files[guard] == guard_source().encode() and first.vllm.guard_dir == str(guard.parent)


def test_a_pools_server_resolves_only_the_results_its_list_names_and_unloads_those_it_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the guard's resolver gives vLLM for a model name it does not know (a pool's served results), and what
    it unloads once the operator takes a result off the list; both in a real vLLM:
    tests/trainer/test_adapters_vllm.py."""
    listing = tmp_path / "served-results.json"
    served = vllm_guard.ServedResults(str(listing))
    assert served.adapter("done") is None and served.take_withdrawn() == []  # no list (yet): nothing
    adapter = tmp_path / "runs" / "done" / "result" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")

    def publish(doc: object, text: str | None = None) -> None:
        """As the kubelet updates a ConfigMap's file: a new file swapped in."""
        fresh = tmp_path / "next.json"
        fresh.write_text(text if text is not None else json.dumps(doc))
        fresh.replace(listing)

    publish({"done": str(adapter), "gone": str(tmp_path / "runs" / "gone"), "later": str(adapter)})
    assert served.adapter("done") == str(adapter)
    assert served.adapter("gone") is None  # listed, its folder missing: not found
    assert served.adapter("other") is None
    publish({"done": str(adapter), "gone": str(tmp_path / "runs" / "gone")})
    assert served.adapter("later") is None  # taken off the list: no longer resolved, and unloaded
    publish({"done": str(adapter)})
    assert served.take_withdrawn() == ["gone", "later"] and served.take_withdrawn() == []
    publish(None, "{not json")  # a list it cannot read: the last one holds
    assert served.adapter("done") == str(adapter) and served.take_withdrawn() == []
    assert vllm_guard.served_results(str(listing)) is vllm_guard.served_results(str(listing))  # one per process
    monkeypatch.delenv("GRPO_SERVED_RESULTS", raising=False)
    assert vllm_guard.register_served_results() is False  # a job's own server (no list): vLLM is not touched
