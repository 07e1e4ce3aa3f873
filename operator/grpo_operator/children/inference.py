"""The vLLM pod (OpenAI server with runtime LoRA loading) and the Service in front of it.

The server is the job's resolution (grpo_operator.resolve), rendered by
grpo_trainer.contract.vllm_command.vllm_command as the local runner renders it. It takes
the job's key (from the job's Secret) on every path but its probes: its guard module comes
from the job's ConfigMap.
"""

from __future__ import annotations

from typing import Any

from grpo_operator.api.spec import ServerOptions
from grpo_operator.children.config import cluster_target, resolved, resolved_pods
from grpo_operator.children.credentials import key_ref
from grpo_operator.children.meta import (
    INFERENCE,
    Job,
    Owner,
    config_map_name,
    inference_pod_name,
    object_meta,
    selector_labels,
    service_name,
)
from grpo_operator.children.podspec import (
    Mount,
    co_location,
    env_from,
    env_list,
    model_mounts,
    pod,
    probes,
    run_mount,
    scratch_mounts,
)
from grpo_operator.resolve import EnvRef, PodPlan, serving_result
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.progress import result_model_name
from grpo_trainer.contract.vllm_command import GUARD_FILE, VLLMServerSpec, vllm_command

PORT_NAME = "http"


def result_endpoint(job: Job, settings: OperatorSettings, *, adapter: bool) -> dict[str, str]:
    """status.endpoint of a job serving its result: the Service's OpenAI URL (its own vLLM's, or its pool's),
    the model to ask for, and where the key of that server is."""
    run = resolved(job, settings)
    model = result_model_name(job.name) if adapter else run.vllm.served_model_name
    key = key_ref(cluster_target(job, settings).api_key_secret)
    return {"url": run.config.vllm.base_url, "model": model, "apiKeySecretRef": key}


def vllm_container(
    spec: VLLMServerSpec, plan: PodPlan, options: ServerOptions, refs: tuple[EnvRef, ...], settings: OperatorSettings
) -> dict[str, Any]:
    """The vLLM server's container: a job's own or a pool's."""
    server = vllm_command(spec)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": options.image or settings.inference_image,
        "command": server.argv,
        "env": env_list(plan.env, server.env, refs=refs),
        "ports": [{"name": PORT_NAME, "containerPort": settings.inference_port, "protocol": "TCP"}],
        "resources": plan.resources,
        **probes(plan.health, PORT_NAME),
    }
    if plan.env_from:
        container["envFrom"] = env_from(plan.env_from)
    pull = options.image_pull_policy or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    return container


def inference_pod(job: Job, settings: OperatorSettings, attempt: int, *, serve_result: bool = False) -> dict[str, Any]:
    """The vLLM pod; ``serve_result``: one that serves the finished job's result adapter from its start."""
    options = job.spec.inference
    run, pods = resolved_pods(job, settings)
    plan = pods.inference
    spec = run.vllm
    if serve_result:
        spec = serving_result(spec, job.name, run.config.run_dir)
    container = vllm_container(spec, plan, options, run.inference_env_refs, settings)
    mounts = [run_mount(job, run.run_sub_path), *model_mounts(job), guard_mount(job, spec.guard_dir), *scratch_mounts(plan)]
    return pod(
        job,
        name=inference_pod_name(job, attempt),
        component=INFERENCE,
        attempt=attempt,
        options=options,
        plan=plan,
        container=container,
        mounts=mounts,
        # vLLM crashes are restarted in place by the kubelet; a lost pod is recreated by the operator.
        restart_policy="Always",
        termination_grace_seconds=30,
        affinity=co_location(job),
        pod_group=True,
    )


def guard_mount(job: Owner, path: str | None, files: tuple[str, ...] = (GUARD_FILE,)) -> Mount:
    """The key guard alone of the job's (the pool's) ConfigMap, where the server's PYTHONPATH points (resolve
    decides it); ``files``: the keys of the ConfigMap mounted there (a pool's also lists the results it
    serves). A whole volume, not a subPath: the kubelet keeps its files current."""
    assert path is not None  # a cluster's server always has its guard
    items = [{"key": f, "path": f} for f in files]
    volume = {"name": "guard", "configMap": {"name": config_map_name(job), "items": items}}
    return Mount(volume, path, read_only=True)


def inference_service(job: Owner, settings: OperatorSettings) -> dict[str, Any]:
    """The Service in front of a job's vLLM pod, or of a pool's servers."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(job, service_name(job), INFERENCE),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(job, INFERENCE),
            "ports": [{"name": PORT_NAME, "port": settings.inference_port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
