"""The vLLM pod (OpenAI server with runtime LoRA loading) and the Service in front of it.

The server is the job's resolution (grpo_operator.resolve), rendered by
grpo_trainer.contract.vllm_command.vllm_command as the local runner renders it.
"""

from __future__ import annotations

from typing import Any

from grpo_operator.children.config import resolved
from grpo_operator.children.meta import INFERENCE, Job, inference_pod_name, object_meta, selector_labels, service_name
from grpo_operator.children.podspec import CACHE_ENV, env_list, model_mounts, pod, resources, run_mount, scratch_mounts
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.vllm_command import vllm_command

HEALTH_PATH = "/health"
PORT_NAME = "http"


def inference_pod(job: Job, settings: OperatorSettings, attempt: int) -> dict[str, Any]:
    spec = job.spec
    options = spec.inference
    run = resolved(job, settings)
    server = vllm_command(run.vllm)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": options.image or settings.inference_image,
        "command": server.argv,
        "env": env_list(CACHE_ENV, server.env),
        "ports": [{"name": PORT_NAME, "containerPort": settings.inference_port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": resources(options, run.inference_gpus),
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
