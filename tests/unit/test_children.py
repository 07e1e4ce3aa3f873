"""The pure builders of a GRPOJob's children: what lands in the cluster for a manifest."""

from __future__ import annotations

import copy
import json
import re

import pytest

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.children import (
    Job,
    config_map,
    inference_pod,
    inference_service,
    persistent_volume_claim,
    referenced_secrets,
    service_name,
    trainer_pod,
    user_claims,
)
from grpo_operator.children.meta import dns_label
from grpo_operator.children.podspec import spec_hash
from grpo_operator.resolve import trainer_command
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.config import TrainerConfig
from support.jobdocs import load_example

SETTINGS = OperatorSettings()


def make_job(doc: dict | None = None, name: str = "papillon", **spec_changes) -> Job:
    doc = copy.deepcopy(doc or load_example())
    doc["spec"].update(spec_changes)
    return Job(name, "team-a", "uid-1234", parse_job(doc).spec)


def container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def env(pod: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod)["env"]}


def vllm_argv(job: Job) -> list[str]:
    return container(inference_pod(job, SETTINGS, 0))["command"]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def mounts(pod: dict) -> dict:
    return {m["mountPath"]: m for m in container(pod)["volumeMounts"]}


def test_papillon_pods_get_the_tutorials_gpu_counts():
    job = make_job()
    trainer, vllm = trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0)
    assert container(trainer)["resources"]["limits"]["nvidia.com/gpu"] == "3"
    assert container(vllm)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert trainer["metadata"]["name"] == "papillon-trainer-0"
    assert inference_pod(job, SETTINGS, 2)["metadata"]["name"] == "papillon-inference-2"


def test_trainer_runs_one_process_per_gpu():
    cmd = container(trainer_pod(make_job(), SETTINGS, 0))["command"]  # the seed: 3 training GPUs
    assert cmd[:3] == ["python", "-m", "grpo_trainer.run.launch"]  # the launcher that keeps exit 75 (not torchrun)
    assert cmd[3:] == ["--nproc", "3", "grpo_trainer.run.main", "--config", "/etc/grpo/config.json"]
    assert trainer_command(1) == ["python", "-m", "grpo_trainer.run.main", "--config", "/etc/grpo/config.json"]
    assert trainer_command(0)[0] == "python"


def test_every_child_is_owned_and_labelled():
    job = make_job()
    objs = [
        persistent_volume_claim(job),
        config_map(job, SETTINGS),
        inference_service(job, SETTINGS),
        inference_pod(job, SETTINGS, 0),
        trainer_pod(job, SETTINGS, 0),
    ]
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "grpo.dev/v1alpha1",
                "kind": "GRPOJob",
                "name": "papillon",
                "uid": "uid-1234",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["grpo.dev/job"] == "papillon"
        assert labels["app.kubernetes.io/instance"] == "papillon"
        assert labels["app.kubernetes.io/managed-by"] == "grpo-operator"
        assert labels["app.kubernetes.io/name"] == "grpojob"
        assert labels["app.kubernetes.io/component"] in {"trainer", "inference", "storage", "config"}


def test_volume_from_storage_spec_or_existing_claim():
    pvc = persistent_volume_claim(
        make_job(storage={"size": "50Gi", "accessMode": "ReadWriteMany", "storageClassName": "fast"})
    )
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast",
    }
    job = make_job(storage={"existingClaim": "shared-runs"})
    assert persistent_volume_claim(job) is None
    assert user_claims(job) == ["shared-runs"]
    claim = next(v for v in trainer_pod(job, SETTINGS, 0)["spec"]["volumes"] if v["name"] == "run")
    assert claim["persistentVolumeClaim"]["claimName"] == "shared-runs"
    # "" is Kubernetes' "no class" (a volume provisioned by hand), not "the default class"
    assert persistent_volume_claim(make_job(storage={"storageClassName": ""}))["spec"]["storageClassName"] == ""
    assert "storageClassName" not in persistent_volume_claim(make_job())["spec"]


def test_claims_and_config_maps_of_any_name_get_distinct_valid_volume_names():
    """A claim or ConfigMap name may hold dots and 253 characters; a pod's volume name is an RFC 1123 label."""
    long_a, long_b = "d" * 200 + "a", "d" * 200 + "b"
    doc = load_example()
    doc["spec"]["model"] = {"path": "qwen", "volume": {"claimName": "models.v2"}}
    doc["spec"]["data"]["train"] = {"file": {"path": "train.jsonl", "volume": {"claimName": long_a}}}
    doc["spec"]["data"]["validation"] = {"file": {"path": "val.jsonl", "volume": {"claimName": long_b}}}
    pod = trainer_pod(Job("papillon", "team-a", "uid-1234", parse_job(doc).spec), SETTINGS, 0)
    volumes = pod["spec"]["volumes"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["name"] for v in volumes if "persistentVolumeClaim" in v}
    names = [claims[c] for c in ("models.v2", long_a, long_b)]
    assert len(set(names)) == 3, names
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63 for n in names), names
    doc = load_example()
    doc["spec"]["data"]["train"] = {"configMap": {"name": "topics.v2", "key": "train.jsonl"}}
    pod = trainer_pod(Job("papillon", "team-a", "uid-1234", parse_job(doc).spec), SETTINGS, 0)
    (volume,) = [v["name"] for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == "topics.v2"]
    assert "." not in volume and volume.startswith("data-topics-v2-"), volume


def test_read_write_once_colocates_the_two_pods_on_one_node():
    job = make_job()
    for pod in (trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0)):
        (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        # both pods match the term, so the first is placed freely and the second follows it
        selector = term["labelSelector"]
        labels = pod["metadata"]["labels"]
        assert all(labels[k] == v for k, v in selector["matchLabels"].items())
        (expr,) = selector["matchExpressions"]
        assert labels[expr["key"]] in expr["values"]
    rwx = make_job(storage={"accessMode": "ReadWriteMany"})
    assert "affinity" not in trainer_pod(rwx, SETTINGS, 0)["spec"]


def test_pods_meet_pod_security_restricted():
    job = make_job()
    for pod in (trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0)):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        sc = container(pod)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
        # restricted allows only these volume types
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected"}
        # a read-only root needs writable places for HOME, caches and /tmp
        e, m = env(pod), mounts(pod)
        for path in ("/tmp", e["HOME"], "/dev/shm"):
            assert not m[path].get("readOnly")
        assert e["XDG_CACHE_HOME"].startswith(e["HOME"])
        assert e["HF_HOME"].startswith("/mnt/grpo")


def test_vllm_serves_lora_at_runtime_with_enough_rank_and_slots():
    job = make_job()
    pod = inference_pod(job, SETTINGS, 0)
    c = container(pod)
    assert c["image"] == SETTINGS.inference_image and c["image"].startswith("vllm/vllm-openai:v")
    argv = c["command"]
    assert argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-lora" in argv
    assert flag(argv, "--max-lora-rank") == "8"
    assert int(flag(argv, "--max-loras")) >= 2
    assert flag(argv, "--model") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert flag(argv, "--port") == "8000" == str(c["ports"][0]["containerPort"])
    assert env(pod)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env(pod)["VLLM_CACHE_ROOT"].startswith("/mnt/grpo/")  # writable with a read-only root, kept across attempts
    probe = c["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and probe["port"] == "http"
    assert mounts(pod)["/mnt/grpo"]["name"] == "run"


@pytest.mark.parametrize("rank,expected", [(1, "1"), (9, "16"), (16, "16"), (33, "64"), (300, "320"), (512, "512")])
def test_max_lora_rank_fits_the_jobs_adapter_rank(rank, expected):
    doc = load_example()
    doc["spec"]["trainKwargs"]["lora_config"]["r"] = rank
    assert flag(vllm_argv(make_job(doc)), "--max-lora-rank") == expected


def test_vllm_tensor_parallel_and_user_options():
    doc = load_example()
    doc["spec"]["trainKwargs"]["num_inference_gpus"] = 2
    doc["spec"]["model"]["maxModelLen"] = 4096
    doc["spec"]["inference"] = {
        "maxLoras": 6,
        "gpuMemoryUtilization": 0.8,
        "extraArgs": ["--enforce-eager"],
        "image": "my/vllm:1",
    }
    job = make_job(doc)
    argv = vllm_argv(job)
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--max-loras") == "6"
    assert flag(argv, "--max-model-len") == "4096"
    assert flag(argv, "--gpu-memory-utilization") == "0.8"
    assert argv[-1] == "--enforce-eager"
    pod = inference_pod(job, SETTINGS, 0)
    assert container(pod)["image"] == "my/vllm:1"
    assert container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_api_keys_come_from_secrets_never_from_the_config_map():
    job = make_job()
    pod = trainer_pod(job, SETTINGS, 0)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(pod)["env"] if "valueFrom" in e}
    assert refs == {
        "GRPO_UNTRUSTED_API_KEY": {"name": "openai-api-key", "key": "api-key"},
        "GRPO_JUDGE_API_KEY": {"name": "openai-api-key", "key": "api-key"},
        "VLLM_API_KEY": {"name": "papillon-vllm-key-uid-1234", "key": "api-key"},  # the job's own, generated
    }
    assert referenced_secrets(job) == [("openai-api-key", "api-key")]  # the user's, checked before pods start
    text = config_map(job, SETTINGS)["data"]["config.json"]
    assert "openai-api-key" not in text
    cfg = TrainerConfig.model_validate(json.loads(text))
    assert cfg.untrusted is not None and cfg.untrusted.api_key_env == "GRPO_UNTRUSTED_API_KEY"


def test_config_map_is_the_trainer_contract_with_cluster_paths():
    job = make_job()
    cfg = TrainerConfig.model_validate(json.loads(config_map(job, SETTINGS)["data"]["config.json"]))
    assert cfg.job_name == "papillon"
    assert cfg.run_dir == "/mnt/grpo"
    assert cfg.vllm.base_url == f"http://{service_name(job)}.team-a.svc.cluster.local:8000/v1"
    assert cfg.vllm.adapter_dir == "/mnt/grpo/adapters"
    assert cfg.port == SETTINGS.trainer_port
    assert cfg.device == "cuda"
    assert cfg.grpo.num_train_steps == 500 and cfg.train.lora_config.r == 8
    # the trainer pod mounts the config where the command reads it, and exposes the port
    pod = trainer_pod(job, SETTINGS, 0)
    assert mounts(pod)["/etc/grpo"]["readOnly"] is True
    assert container(pod)["ports"][0]["containerPort"] == cfg.port
    # the Service routes to the vLLM pod's port
    svc = inference_service(job, SETTINGS)
    assert svc["spec"]["selector"].items() <= inference_pod(job, SETTINGS, 0)["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_model_and_data_volumes_are_mounted_read_only_where_the_config_points():
    doc = load_example()
    doc["spec"]["model"] = {"path": "qwen", "volume": {"claimName": "models"}}
    doc["spec"]["data"]["train"] = {"file": {"path": "train.jsonl", "volume": {"claimName": "data", "subPath": "pupa"}}}
    job = make_job(doc)
    cfg = TrainerConfig.model_validate(json.loads(config_map(job, SETTINGS)["data"]["config.json"]))
    assert cfg.model == "/models/models/qwen"
    assert cfg.train_data.path == "/datasets/data/train.jsonl"
    trainer, vllm = trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0)
    assert mounts(trainer)["/models/models"]["readOnly"] is True
    assert mounts(vllm)["/models/models"]["readOnly"] is True
    assert mounts(trainer)["/datasets/data"] == {
        "name": "claim-data",
        "mountPath": "/datasets/data",
        "readOnly": True,
        "subPath": "pupa",
    }
    assert "/datasets/data" not in mounts(vllm)
    assert flag(vllm_argv(job), "--model") == "/models/models/qwen"
    assert user_claims(job) == ["models", "data"]


def test_pod_options_reach_the_pod():
    doc = load_example()
    doc["spec"]["trainer"] = {
        "image": "registry.example/trainer:2",
        "imagePullPolicy": "Always",
        "resources": {"requests": {"cpu": 8, "memory": "64Gi"}},
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training",
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "labels": {"team": "a"},
        "annotations": {"note": "x"},
    }
    pod = trainer_pod(make_job(doc), SETTINGS, 1)
    c, spec = container(pod), pod["spec"]
    assert c["image"] == "registry.example/trainer:2" and c["imagePullPolicy"] == "Always"
    assert c["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "3"},  # memory limited to the request by default
    }
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["priorityClassName"] == "training"
    assert env(pod)["NCCL_DEBUG"] == "INFO"
    assert pod["metadata"]["labels"]["team"] == "a" and pod["metadata"]["labels"]["grpo.dev/attempt"] == "1"
    assert pod["metadata"]["annotations"] == {"note": "x", "grpo.dev/pod-spec-hash": spec_hash(spec)}
    assert spec["restartPolicy"] == "Never"  # the operator counts trainer failures


def test_kueue_queue_gates_both_pods_as_one_group():
    job = make_job(queueName="gpu-queue")
    for pod in (trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0)):
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "papillon"
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
        assert pod["spec"]["schedulingGates"] == [{"name": "kueue.x-k8s.io/admission"}]
    plain = trainer_pod(make_job(), SETTINGS, 0)
    assert "schedulingGates" not in plain["spec"] and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_every_label_and_annotation_the_operator_sets_is_refused_in_the_jobs_own():
    """A job's spec.trainer/inference labels and annotations cannot set what the operator sets on its pods."""
    job = make_job(queueName="gpu-queue")
    serving = inference_pod(job, SETTINGS, 0, serve_result=True)
    for pod in (trainer_pod(job, SETTINGS, 0), inference_pod(job, SETTINGS, 0), serving):
        for where in ("labels", "annotations"):
            for key in pod["metadata"][where]:
                doc = load_example()
                doc["spec"]["trainer"] = {where: {key: "x"}}
                with pytest.raises(InvalidJob, match=f"spec.trainer.{where}: {re.escape(key)} is refused"):
                    parse_job(doc)


def test_builders_are_deterministic():
    job = make_job()
    assert trainer_pod(job, SETTINGS, 3) == trainer_pod(job, SETTINGS, 3)
    assert config_map(job, SETTINGS) == config_map(make_job(), SETTINGS)


def test_service_names_are_valid_dns_labels_for_any_job_name():
    for base in ("papillon", "a" * 63, "1job", "x-" * 31 + "y"):
        name = dns_label(base, "vllm")
        assert len(name) <= 63 and name[0].isalpha() and name[-1].isalnum(), name
    assert dns_label("a" * 63, "vllm") != dns_label("a" * 62 + "b", "vllm")
