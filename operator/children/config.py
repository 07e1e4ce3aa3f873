"""The trainer's config contract in a ConfigMap, and where things are inside the pods.

The document holds no secrets: API keys reach the trainer only as environment
variables filled from the job's Secret references (see trainer.py).
"""

from __future__ import annotations

from typing import Any

from grpo_operator.api.translate import Layout, trainer_config
from grpo_operator.settings import OperatorSettings

from .meta import CONFIG, Job, config_map_name, object_meta, service_name

RUN_MOUNT = "/mnt/grpo"
CONFIG_MOUNT = "/etc/grpo"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_KEY}"
MODEL_MOUNT = "/models"
DATA_MOUNT = "/datasets"


def inference_url(job: Job, settings: OperatorSettings) -> str:
    """The vLLM Service's OpenAI base URL as the trainer pod resolves it."""
    host = f"{service_name(job)}.{job.namespace}.svc.{settings.cluster_domain}"
    return f"http://{host}:{settings.inference_port}/v1"


def cluster_layout(job: Job, settings: OperatorSettings) -> Layout:
    """Where the volume, model and data are inside the job's pods."""
    return Layout(
        run_dir=RUN_MOUNT,
        vllm_run_dir=RUN_MOUNT,
        vllm_base_url=inference_url(job, settings),
        model_mount=MODEL_MOUNT,
        data_mount=DATA_MOUNT,
        port=settings.trainer_port,
        device="cuda" if job.spec.train_kwargs.num_training_gpus > 0 else "cpu",
    )


def config_json(job: Job, settings: OperatorSettings) -> str:
    return trainer_config(job.name, job.spec, cluster_layout(job, settings)).to_json()


def config_map(job: Job, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(job, config_map_name(job), CONFIG),
        "data": {CONFIG_KEY: config_json(job, settings)},
    }
