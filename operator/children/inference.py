"""The vLLM pod (OpenAI server with runtime LoRA loading) and the Service in front of it.

The server's argv and environment come from grpo_trainer.vllm_server.vllm_command
(pure, standard library only), which the local runner uses too.
"""

from __future__ import annotations

from typing import Any

from grpo_operator.api.spec import GRPOJobSpec
from grpo_operator.api.translate import max_loras, model_location, served_model_name
from grpo_operator.settings import OperatorSettings
from grpo_trainer.vllm_server import VLLMServerSpec, vllm_command

from .config import MODEL_MOUNT
from .meta import INFERENCE, Job, inference_pod_name, object_meta, selector_labels, service_name
from .podspec import CACHE_ENV, env_list, model_mounts, pod, resources, run_mount, scratch_mounts

HEALTH_PATH = "/health"
PORT_NAME = "http"


def vllm_server_spec(spec: GRPOJobSpec, port: int, model_mount: str = MODEL_MOUNT) -> VLLMServerSpec:
    """The job's vLLM server, described for :func:`grpo_trainer.vllm_server.vllm_command`.

    The local runner builds its server from the same function, so a pod and a
    local run start vLLM with the same flags.
    """
    gpus = spec.train_kwargs.num_inference_gpus
    return VLLMServerSpec(
        model=model_location(spec, model_mount),
        served_model_name=served_model_name(spec),
        port=port,
        host="0.0.0.0",
        lora_rank=spec.train_kwargs.lora_config.r,
        max_loras=max_loras(spec),
        dtype=spec.model.dtype,
        max_model_len=spec.model.max_model_len,
        device="gpu" if gpus > 0 else "cpu",
        tensor_parallel_size=max(gpus, 1),
        gpu_memory_utilization=spec.inference.gpu_memory_utilization,
        python="python3",
        extra_args=tuple(spec.inference.extra_args),
        extra_env={"VLLM_CACHE_ROOT": f"{CACHE_ENV['XDG_CACHE_HOME']}/vllm"},
    )


def inference_pod(job: Job, settings: OperatorSettings, attempt: int) -> dict[str, Any]:
    spec = job.spec
    options = spec.inference
    server = vllm_command(vllm_server_spec(spec, settings.inference_port))
    container: dict[str, Any] = {
        "name": "vllm",
        "image": options.image or settings.inference_image,
        "command": server.argv,
        "env": env_list(CACHE_ENV, server.env, options.env),
        "ports": [{"name": PORT_NAME, "containerPort": settings.inference_port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": resources(options, spec.train_kwargs.num_inference_gpus),
    }
    pull = options.image_pull_policy or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    mounts = [run_mount(job), *model_mounts(job), *scratch_mounts()]
    return pod(
        job,
        name=inference_pod_name(job, attempt),
        component=INFERENCE,
        attempt=attempt,
        options=options,
        container=container,
        mounts=mounts,
        # vLLM crashes are restarted in place by the kubelet; a lost pod is recreated by the operator.
        restart_policy="Always",
        termination_grace_seconds=30,
    )


def inference_service(job: Job, settings: OperatorSettings) -> dict[str, Any]:
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
