"""The trainer's config file in a ConfigMap, and the job's resolution for its pods.

The document holds no secrets: API keys reach the trainer only as environment
variables filled from the job's Secret references (see trainer.py). The ConfigMap also
holds vLLM's key guard (grpo_trainer.contract.vllm_guard), which the vLLM pod imports.
"""

from __future__ import annotations

from typing import Any

from grpo_operator.children.meta import CONFIG, Job, api_key_secret_name, config_map_name, object_meta, service_name
from grpo_operator.resolve import (
    CONFIG_KEY,
    ClusterTarget,
    ResolvedJob,
    ResolvedPods,
    inline_data_files,
    resolve,
    resolve_pods,
)
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.vllm_command import GUARD_FILE, guard_source


def cluster_target(job: Job, settings: OperatorSettings) -> ClusterTarget:
    """Where the job's pods find each other (the vLLM Service's in-cluster name, the ports) and whether
    its run directory is its volume's root."""
    return ClusterTarget(
        inference_host=f"{service_name(job)}.{job.namespace}.svc.{settings.cluster_domain}",
        inference_port=settings.inference_port,
        trainer_port=settings.trainer_port,
        api_key_secret=api_key_secret_name(job),
        claim_root=job.claim_root,
    )


def resolved(job: Job, settings: OperatorSettings) -> ResolvedJob:
    """The job's resolution for its pods (grpo_operator.resolve): what every pod builder renders."""
    return resolve(job.name, job.spec, cluster_target(job, settings), namespace=job.namespace, uid=job.uid)


def resolved_pods(job: Job, settings: OperatorSettings) -> tuple[ResolvedJob, ResolvedPods]:
    """The job's resolution and what its two pods add to it: what the pod builders render."""
    run = resolved(job, settings)
    return run, resolve_pods(job.spec, run, cluster_target(job, settings))


def config_map(job: Job, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(job, config_map_name(job), CONFIG),
        # the trainer's config, the job's inline data sets (resolve points the config at them), vLLM's key guard
        "data": {
            CONFIG_KEY: resolved(job, settings).config.to_json(),
            **inline_data_files(job.spec),
            GUARD_FILE: guard_source(),
        },
    }
