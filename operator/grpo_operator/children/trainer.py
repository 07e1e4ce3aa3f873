"""The trainer pod: the job's resolved trainer command (one data-parallel process per GPU),
config from the ConfigMap, API keys and the hub token from the job's Secret references,
a port for /progress, /metrics and /health."""

from __future__ import annotations

from typing import Any

from grpo_operator.children.config import resolved_pods
from grpo_operator.children.meta import (
    POOL_CLIENT_LABEL,
    POOL_UID_ANNOTATION,
    TRAINER,
    Job,
    config_map_name,
    trainer_pod_name,
)
from grpo_operator.children.podspec import (
    Mount,
    co_location,
    code_mounts,
    data_mounts,
    env_from,
    env_list,
    model_mounts,
    pod,
    probes,
    run_mount,
    scratch_mounts,
)
from grpo_operator.resolve import (
    CODE_FETCH_ENV,
    CODE_FETCH_RESOURCES,
    CONFIG_MOUNT,
    TERMINATION_LOG,
    CodeFetch,
    code_env_refs,
    env_refs,
)
from grpo_operator.settings import OperatorSettings

PORT_NAME = "http"


def referenced_secrets(job: Job) -> list[tuple[str, str]]:
    """(secret, key) pairs the job's pods cannot start without, each once (the operator checks they exist)."""
    trainer, inference = env_refs(job.spec)
    if job.pool is not None:
        inference = ()  # no vLLM pod of its own: the pool's references are the pool's
    refs = (*trainer, *inference, *code_env_refs(job.spec))
    keys = [(r.source, r.key) for r in refs if r.kind == "secret" and not r.optional]
    return list(dict.fromkeys(keys))


def trainer_pod(job: Job, settings: OperatorSettings, attempt: int) -> dict[str, Any]:
    options = job.spec.trainer
    run, pods = resolved_pods(job, settings)
    plan = pods.trainer
    container: dict[str, Any] = {
        "name": "trainer",
        "image": options.image or settings.trainer_image,
        "command": run.trainer_argv,
        "env": env_list(plan.env, run.trainer_env, refs=run.trainer_env_refs),
        # The trainer's final progress lands in the pod status even when the last /progress poll
        # missed the end; a crash before it writes leaves the end of its log there instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "ports": [{"name": PORT_NAME, "containerPort": settings.trainer_port, "protocol": "TCP"}],
        "resources": plan.resources,
        **probes(plan.health, PORT_NAME),
    }
    if plan.env_from:
        container["envFrom"] = env_from(plan.env_from)
    pull = options.image_pull_policy or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    config = Mount({"name": "config", "configMap": {"name": config_map_name(job)}}, CONFIG_MOUNT, read_only=True)
    scratch = scratch_mounts(plan)
    fetchers = tuple(
        (code_fetcher(fetch, container), [*code_mounts(job, writable=fetch.index), *scratch[:2]])  # /tmp, $HOME
        for fetch in run.code_fetches
    )
    mounts = [run_mount(job, run.run_sub_path), config, *model_mounts(job), *data_mounts(job), *code_mounts(job), *scratch]
    manifest = pod(
        job,
        name=trainer_pod_name(job, attempt),
        component=TRAINER,
        attempt=attempt,
        options=options,
        plan=plan,
        container=container,
        mounts=mounts,
        # The operator counts trainer failures against backoffLimit and recreates the pod.
        restart_policy="Never",
        termination_grace_seconds=60,
        affinity=co_location(job),
        pod_group=True,
        init_containers=fetchers,
    )
    if job.pool is not None:  # what the pool's NetworkPolicy admits, and which pool's key the pod holds
        manifest["metadata"]["labels"][POOL_CLIENT_LABEL] = job.pool.name
        manifest["metadata"]["annotations"][POOL_UID_ANNOTATION] = job.pool.uid
    return manifest


def code_fetcher(fetch: CodeFetch, trainer: dict[str, Any]) -> dict[str, Any]:
    """The init container that fills spec.code[i]'s folder (git, pip): the trainer's image, its credentials only."""
    container: dict[str, Any] = {
        "name": f"code-{fetch.index}",
        "image": trainer["image"],
        "command": fetch.argv,
        "env": env_list(CODE_FETCH_ENV, refs=fetch.env_refs),
        "resources": CODE_FETCH_RESOURCES,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # its error reaches the job's Event
    }
    if "imagePullPolicy" in trainer:
        container["imagePullPolicy"] = trainer["imagePullPolicy"]
    return container
