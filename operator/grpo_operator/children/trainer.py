"""The trainer pod: the job's resolved trainer command (one data-parallel process per GPU),
config from the ConfigMap, API keys from the job's Secret references, a port for
/progress and /metrics."""

from __future__ import annotations

from typing import Any

from grpo_operator.api.spec import ExternalLM
from grpo_operator.children.config import resolved
from grpo_operator.children.meta import TRAINER, Job, config_map_name, trainer_pod_name
from grpo_operator.children.podspec import (
    CACHE_ENV,
    Mount,
    data_mounts,
    env_list,
    model_mounts,
    pod,
    resources,
    run_mount,
    scratch_mounts,
)
from grpo_operator.resolve import CONFIG_MOUNT
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.config import JUDGE_API_KEY_ENV, TERMINATION_LOG_ENV, UNTRUSTED_API_KEY_ENV

TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
PORT_NAME = "http"


def secret_env(job: Job) -> list[dict[str, Any]]:
    """API keys as environment variables read from Secrets; never in the ConfigMap."""
    pairs: list[tuple[str, ExternalLM | None]] = [
        (UNTRUSTED_API_KEY_ENV, job.spec.untrusted_model),
        (JUDGE_API_KEY_ENV, job.spec.judge),
    ]
    env = []
    for var, lm in pairs:
        if lm is not None and lm.api_key_secret_ref is not None:
            ref = lm.api_key_secret_ref
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def referenced_secrets(job: Job) -> list[tuple[str, str]]:
    """(secret, key) pairs the trainer pod needs, each once."""
    refs = [
        lm.api_key_secret_ref
        for lm in (job.spec.untrusted_model, job.spec.judge)
        if lm is not None and lm.api_key_secret_ref is not None
    ]
    return list(dict.fromkeys((r.name, r.key) for r in refs))


def trainer_pod(job: Job, settings: OperatorSettings, attempt: int) -> dict[str, Any]:
    spec = job.spec
    options = spec.trainer
    run = resolved(job, settings)
    container: dict[str, Any] = {
        "name": "trainer",
        "image": options.image or settings.trainer_image,
        "command": run.trainer_argv,
        "env": env_list(CACHE_ENV, {TERMINATION_LOG_ENV: TERMINATION_LOG}, run.trainer_env) + secret_env(job),
        # The trainer's final progress lands in the pod status even when the last /progress poll
        # missed the end; a crash before it writes leaves the end of its log there instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "ports": [{"name": PORT_NAME, "containerPort": settings.trainer_port, "protocol": "TCP"}],
        "resources": resources(options, run.training_gpus),
    }
    pull = options.image_pull_policy or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    config = Mount({"name": "config", "configMap": {"name": config_map_name(job)}}, CONFIG_MOUNT, read_only=True)
    mounts = [run_mount(job), config, *model_mounts(job), *data_mounts(job), *scratch_mounts()]
    return pod(
        job,
        name=trainer_pod_name(job, attempt),
        component=TRAINER,
        attempt=attempt,
        options=options,
        container=container,
        mounts=mounts,
        # The operator counts trainer failures against backoffLimit and recreates the pod.
        restart_policy="Never",
        termination_grace_seconds=60,
    )
