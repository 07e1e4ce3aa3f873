"""What a real GPU node asks of the job's pods: Secret-backed environment, registry credentials,
resources that are never BestEffort, a sized /dev/shm, health probes and caches that outlive
an attempt. All of it decided by grpo_operator.resolve and only rendered by the pod builders."""

from __future__ import annotations

import copy
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.api.quantity import parse_quantity
from grpo_operator.api.spec import INFERENCE_ENV_NAMES, OPERATOR_ENV_NAMES
from grpo_operator.children import Job, config_map, inference_pod, referenced_secrets, trainer_pod
from grpo_operator.local.default import default_job
from grpo_operator.local.plan import InvalidInput, check_env_refs
from grpo_operator.settings import OperatorSettings
from support.jobdocs import load_example

SETTINGS = OperatorSettings()


def job_of(doc: dict[str, Any], name: str = "papillon") -> Job:
    return Job(name, "team-a", "uid-1", parse_job(doc).spec)


def seed(**spec: Any) -> dict[str, Any]:
    doc = load_example()
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def pods(job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    return trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def env_entries(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(pod)["env"]}


def qos_class(pod: dict[str, Any]) -> str:
    """The pod's QoS class, by the kubelet's rule (cpu and memory only; extended resources do not count)."""
    guaranteed, any_set = True, False
    for c in pod["spec"]["containers"]:
        res = c.get("resources", {})
        requests, limits = res.get("requests", {}), res.get("limits", {})
        for name in ("cpu", "memory"):
            if name in requests or name in limits:
                any_set = True
            request = requests.get(name, limits.get(name))
            if name not in limits or parse_quantity(request) != parse_quantity(limits[name]):
                guaranteed = False
    return "Guaranteed" if guaranteed else "Burstable" if any_set else "BestEffort"


# --------------------------------------------------------------------------- environment


def test_env_from_secrets_and_config_maps_and_pull_secrets_reach_both_pods() -> None:
    job = job_of(
        seed(
            trainer={
                "env": [
                    {"name": "NCCL_DEBUG", "value": "INFO"},
                    {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
                ],
                "envFrom": [
                    {"secretRef": {"name": "team-secrets"}},
                    {"configMapRef": {"name": "nccl", "optional": True}, "prefix": "X_"},
                ],
                "imagePullSecrets": [{"name": "registry-creds"}],
            },
            inference={
                "env": [
                    {
                        "name": "VLLM_LOGGING_LEVEL",
                        "valueFrom": {"configMapKeyRef": {"name": "vllm", "key": "level", "optional": True}},
                    }
                ],
                "imagePullSecrets": [{"name": "dockerhub"}],
            },
        )
    )
    trainer, vllm = pods(job)
    t = env_entries(trainer)
    assert t["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "INFO"}
    assert t["WANDB_API_KEY"] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}},
    }
    assert container(trainer)["envFrom"] == [
        {"secretRef": {"name": "team-secrets"}},
        {"prefix": "X_", "configMapRef": {"name": "nccl", "optional": True}},
    ]
    assert env_entries(vllm)["VLLM_LOGGING_LEVEL"]["valueFrom"] == {
        "configMapKeyRef": {"name": "vllm", "key": "level", "optional": True}
    }
    assert "envFrom" not in container(vllm)
    assert trainer["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert vllm["spec"]["imagePullSecrets"] == [{"name": "dockerhub"}]
    assert "imagePullSecrets" not in trainer_pod(job_of(seed()), SETTINGS, 0)["spec"]
    # the operator checks required Secret keys before it creates pods; optional ones and ConfigMaps are not its business
    assert referenced_secrets(job) == [("openai-api-key", "api-key"), ("wandb", "api-key")]
    # every name appears once, in both pods
    for pod in (trainer, vllm):
        names = [e["name"] for e in container(pod)["env"]]
        assert len(names) == len(set(names)), names


def test_the_hub_token_is_hf_token_from_a_secret_in_both_pods_and_nowhere_else() -> None:
    doc = seed()
    doc["spec"]["model"]["hub"] = {"tokenSecretRef": {"name": "hf-token"}}
    doc["spec"]["data"]["train"]["hub"]["tokenSecretRef"] = {"name": "hf-token"}  # the same key: allowed
    job = job_of(doc)
    for pod in pods(job):
        assert env_entries(pod)["HF_TOKEN"] == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
        }
    assert ("hf-token", "token") in referenced_secrets(job)
    assert "hf-token" not in config_map(job, SETTINGS)["data"]["config.json"]

    data_only = seed()
    data_only["spec"]["data"]["validation"]["hub"]["tokenSecretRef"] = {"name": "hf-data", "key": "hf"}
    trainer, vllm = pods(job_of(data_only))
    assert env_entries(trainer)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-data", "key": "hf"}
    assert "HF_TOKEN" not in env_entries(vllm)  # vLLM reads no data set


def _jobs(tmp_path: Path) -> list[Job]:
    model = tmp_path / "model"
    model.mkdir()
    token = seed()
    token["spec"]["model"]["hub"] = {"tokenSecretRef": {"name": "hf"}}
    return [job_of(seed()), job_of(default_job(model), "tiny"), job_of(token)]


def test_every_variable_the_operator_sets_is_one_the_api_refuses(tmp_path: Path) -> None:
    """The API's list and what the pods really get cannot drift apart."""
    for job in _jobs(tmp_path):
        trainer, vllm = pods(job)
        for pod, refused in ((trainer, set(OPERATOR_ENV_NAMES)), (vllm, {*OPERATOR_ENV_NAMES, *INFERENCE_ENV_NAMES})):
            rendered = {e["name"] for e in container(pod)["env"]}
            assert rendered <= refused, rendered - refused


@pytest.mark.parametrize("name", OPERATOR_ENV_NAMES)
def test_a_job_setting_an_operator_variable_is_rejected_naming_it(name: str) -> None:
    for pod_field in ("trainer", "inference"):
        with pytest.raises(InvalidJob) as err:
            parse_job(seed(**{pod_field: {"env": [{"name": name, "value": "x"}]}}))
        (problem,) = err.value.problems
        assert problem.startswith(f"spec.{pod_field}.env[0].name: {name} is set by the operator; remove it"), problem


def test_a_local_run_reads_secret_backed_variables_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = seed(trainer={"env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "w", "key": "k"}}}]})
    spec = parse_job(doc).spec
    monkeypatch.setenv("GRPO_UNTRUSTED_API_KEY", "sk-1")
    monkeypatch.setenv("GRPO_JUDGE_API_KEY", "sk-2")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(
        InvalidInput, match=r"spec\.trainer\.env\[0\]\.valueFrom: local runs read this key from \$WANDB_API_KEY"
    ):
        check_env_refs(spec)
    monkeypatch.setenv("WANDB_API_KEY", "w-1")
    check_env_refs(spec)
    monkeypatch.delenv("GRPO_JUDGE_API_KEY")
    with pytest.raises(InvalidInput, match=r"spec\.judge\.apiKeySecretRef: .*\$GRPO_JUDGE_API_KEY"):
        check_env_refs(spec)


# --------------------------------------------------------------------------- resources and /dev/shm


def test_the_seeds_pods_are_burstable_with_memory_limited_to_the_request() -> None:
    trainer, vllm = pods(job_of(seed()))
    assert container(trainer)["resources"] == {
        "requests": {"cpu": "12", "memory": "72Gi"},
        "limits": {"memory": "72Gi", "nvidia.com/gpu": "3"},
    }
    assert container(vllm)["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
    }
    assert qos_class(trainer) == qos_class(vllm) == "Burstable"


def test_resources_are_overridden_key_by_key_and_can_make_a_pod_guaranteed() -> None:
    guaranteed = seed(
        trainer={"resources": {"requests": {"cpu": 16, "memory": "96Gi"}, "limits": {"cpu": 16, "memory": "96Gi"}}}
    )
    trainer, _ = pods(job_of(guaranteed))
    assert qos_class(trainer) == "Guaranteed"
    assert container(trainer)["resources"]["limits"]["nvidia.com/gpu"] == "3"

    partial = seed(inference={"resources": {"requests": {"cpu": "6"}, "limits": {"memory": "40Gi"}}})
    _, vllm = pods(job_of(partial))
    # cpu from the job, memory requested at its limit (as Kubernetes defaults a lone limit)
    assert container(vllm)["resources"]["requests"] == {"cpu": "6", "memory": "40Gi"}
    assert container(vllm)["resources"]["limits"] == {"memory": "40Gi", "nvidia.com/gpu": "1"}


def test_a_cpu_only_job_fits_a_small_node(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    trainer, vllm = pods(job_of(default_job(model), "tiny"))
    cpu = sum(parse_quantity(container(p)["resources"]["requests"]["cpu"]) for p in (trainer, vllm))
    memory = sum(parse_quantity(container(p)["resources"]["requests"]["memory"]) for p in (trainer, vllm))
    assert cpu <= 16 and memory <= 24 * 2**30  # the test cluster's process node
    assert qos_class(trainer) == qos_class(vllm) == "Burstable"
    assert "nvidia.com/gpu" not in container(trainer)["resources"]["limits"]


def _shm(pod: dict[str, Any]) -> dict[str, Any]:
    (mount,) = [m for m in container(pod)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    return volume["emptyDir"]


def test_dev_shm_is_memory_backed_and_sized_per_gpu_or_as_the_job_says(tmp_path: Path) -> None:
    trainer, vllm = pods(job_of(seed()))
    assert _shm(trainer) == {"medium": "Memory", "sizeLimit": "6Gi"}  # 3 training GPUs
    assert _shm(vllm) == {"medium": "Memory", "sizeLimit": "2Gi"}
    for pod in (trainer, vllm):  # it counts in the pod's memory, so it must fit in the limit
        limit = parse_quantity(container(pod)["resources"]["limits"]["memory"])
        assert parse_quantity(_shm(pod)["sizeLimit"]) <= limit / 2
    trainer, _ = pods(job_of(seed(trainer={"shmSize": "16Gi"})))
    assert _shm(trainer)["sizeLimit"] == "16Gi"
    model = tmp_path / "model"
    model.mkdir()
    assert _shm(pods(job_of(default_job(model), "tiny"))[1])["sizeLimit"] == "1Gi"


# --------------------------------------------------------------------------- probes and caches


def test_both_containers_have_startup_and_liveness_probes_on_health() -> None:
    trainer, vllm = pods(job_of(seed(inference={"startupTimeoutSeconds": 3600})))
    for pod, startup in ((trainer, 1800), (vllm, 3600)):
        c = container(pod)
        for kind in ("startupProbe", "livenessProbe"):
            assert c[kind]["httpGet"] == {"path": "/health", "port": "http"}, kind
            assert c["ports"][0]["name"] == "http"
        window = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert startup <= window < startup + c["startupProbe"]["periodSeconds"]
        liveness = c["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60  # a busy step is not a hang
        assert liveness["timeoutSeconds"] >= 5
    assert container(vllm)["readinessProbe"]["httpGet"]["path"] == "/health"  # the Service and InferenceReady
    assert "readinessProbe" not in container(trainer)  # no Service in front of it


def test_caches_live_on_the_run_volume_per_component_and_scratch_in_empty_dirs() -> None:
    trainer, vllm = pods(job_of(seed()))
    t = {k: v["value"] for k, v in env_entries(trainer).items() if "value" in v}
    v = {k: e["value"] for k, e in env_entries(vllm).items() if "value" in e}
    assert t["HF_HOME"] == v["HF_HOME"] == "/mnt/grpo/.cache/huggingface"  # one download for both pods
    assert t["TRITON_CACHE_DIR"] == "/mnt/grpo/.cache/trainer/triton"
    assert v["TRITON_CACHE_DIR"] == "/mnt/grpo/.cache/inference/triton"
    assert t["TORCHINDUCTOR_CACHE_DIR"].startswith("/mnt/grpo/.cache/trainer/")
    assert v["VLLM_CACHE_ROOT"] == "/mnt/grpo/.cache/inference/vllm"
    for pod, env in ((trainer, t), (vllm, v)):
        mounts = {m["mountPath"]: m for m in container(pod)["volumeMounts"]}
        assert mounts["/mnt/grpo"]["name"] == "run" and not mounts["/mnt/grpo"].get("readOnly")
        home = next(vol for vol in pod["spec"]["volumes"] if vol["name"] == mounts[env["HOME"]]["name"])
        assert "emptyDir" in home


def test_pods_with_every_option_still_meet_pod_security_restricted() -> None:
    job = job_of(
        seed(
            trainer={
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "s"}}],
                "imagePullSecrets": [{"name": "r"}],
                "shmSize": "8Gi",
            },
            inference={"imagePullSecrets": [{"name": "r"}]},
        )
    )
    for pod in pods(job):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not spec.get("hostIPC") and not spec.get("hostNetwork")  # /dev/shm is an emptyDir, not the host's
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected"}
        sc = container(pod)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True


def test_quantities_compare_as_the_api_server_does() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("64Gi") == 64 * 2**30 > parse_quantity("64G") == 64 * 10**9
    assert parse_quantity(8) == parse_quantity("8") == parse_quantity("8000m")
    assert parse_quantity("1e3") == 1000
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("64GB")
    assert not math.isnan(float(parse_quantity("0.5Ki")))


def test_no_secret_value_is_ever_in_a_manifest() -> None:
    doc = seed()
    doc["spec"]["model"]["hub"] = {"tokenSecretRef": {"name": "hf-token"}}
    job = job_of(doc)
    text = json.dumps([*pods(job), config_map(job, SETTINGS)])
    assert "hf_" not in text and "sk-" not in text
    with pytest.raises(InvalidJob, match="tokenSecretRef"):
        parse_job(seed(trainer={"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}))
