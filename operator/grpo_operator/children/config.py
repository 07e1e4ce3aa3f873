"""The trainer's config file in a ConfigMap, and the job's resolution for its pods.

The document holds no secrets: API keys reach the trainer only as environment
variables filled from the job's Secret references (see trainer.py). The ConfigMap also
holds vLLM's key guard (grpo_trainer.contract.vllm_guard), which the vLLM pod imports.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grpo_operator.children.meta import (
    CONFIG,
    Job,
    Pool,
    api_key_secret_name,
    config_map_name,
    key_secret_name,
    object_meta,
    vllm_service_name,
)
from grpo_operator.resolve import (
    CONFIG_KEY,
    ClusterTarget,
    ResolvedJob,
    ResolvedPods,
    ResolvedPool,
    inline_data_files,
    pool_run_dir,
    resolve,
    resolve_pods,
    resolve_pool,
    served_results,
)
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.vllm_command import GUARD_FILE, guard_source
from grpo_trainer.contract.vllm_guard import SERVED_RESULTS_FILE


def service_host(name: str, namespace: str, settings: OperatorSettings) -> str:
    """The in-cluster DNS name of the vLLM Service of the job (the pool) ``name``."""
    return f"{vllm_service_name(name)}.{namespace}.svc.{settings.cluster_domain}"


def cluster_target(job: Job, settings: OperatorSettings) -> ClusterTarget:
    """Where the job's pods find each other (the vLLM Service's in-cluster name, the ports) and whether
    its run directory is its volume's root; on a pool, the pool's Service, key and claim."""
    if job.pool is not None:
        return ClusterTarget(
            inference_host=service_host(job.pool.name, job.namespace, settings),
            inference_port=settings.inference_port,
            trainer_port=settings.trainer_port,
            api_key_secret=key_secret_name(job.pool.name, job.pool.uid),
            pool_claim=job.pool.claim,
            inference_run_dir=pool_run_dir(job.name),
        )
    return ClusterTarget(
        inference_host=service_host(job.name, job.namespace, settings),
        inference_port=settings.inference_port,
        trainer_port=settings.trainer_port,
        api_key_secret=api_key_secret_name(job),
        claim_root=job.claim_root,
    )


def pool_target(pool: Pool, settings: OperatorSettings) -> ClusterTarget:
    """Where a pool's servers are: its Service, its key; they mount its whole claim at the run mount."""
    return ClusterTarget(
        inference_host=service_host(pool.name, pool.namespace, settings),
        inference_port=settings.inference_port,
        trainer_port=0,
        api_key_secret=api_key_secret_name(pool),
    )


def resolved_pool(pool: Pool, settings: OperatorSettings) -> ResolvedPool:
    return resolve_pool(pool.name, pool.spec, pool_target(pool, settings))


def resolved(job: Job, settings: OperatorSettings) -> ResolvedJob:
    """The job's resolution for its pods (grpo_operator.resolve): what every pod builder renders."""
    return resolve(job.name, job.spec, cluster_target(job, settings), namespace=job.namespace, uid=job.uid)


def resolved_pods(job: Job, settings: OperatorSettings) -> tuple[ResolvedJob, ResolvedPods]:
    """The job's resolution and what its two pods add to it: what the pod builders render."""
    run = resolved(job, settings)
    return run, resolve_pods(job.spec, run, cluster_target(job, settings))


def pool_config_map(pool: Pool, served: Sequence[str] = ()) -> dict[str, Any]:
    """A pool's ConfigMap: vLLM's key guard, which its servers import, and the results they serve (``served``:
    the succeeded jobs'), which the guard's resolver reads as the kubelet updates them."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(pool, config_map_name(pool), CONFIG),
        "data": {
            GUARD_FILE: guard_source(),
            SERVED_RESULTS_FILE: json.dumps(served_results(served), indent=1, sort_keys=True),
        },
    }


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
