"""The operator's own configuration, read from the environment.

The chart sets these variables on the Deployment; a developer running the operator
locally sets the few they need. Defaults are what a production install wants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grpo_trainer.contract.config import DEFAULT_PORT

# The upstream vLLM OpenAI server image; pinned so that a job's behaviour does not
# change under it. Users override it per job (spec.inference.image) or per install.
DEFAULT_INFERENCE_IMAGE = "vllm/vllm-openai:v0.32.0"
DEFAULT_TRAINER_IMAGE = "ghcr.io/grpo-operator/grpo-trainer:0.1.0"
ENV_PREFIX = "GRPO_"


class OperatorSettings(BaseModel):
    """What the operator needs to know that is not in any GRPOJob."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainer_image: str = Field(DEFAULT_TRAINER_IMAGE, description="Default image of trainer pods.")
    inference_image: str = Field(DEFAULT_INFERENCE_IMAGE, description="Default image of vLLM pods.")
    image_pull_policy: Optional[Literal["Always", "IfNotPresent", "Never"]] = Field(
        None, description="Default imagePullPolicy of both pods."
    )
    trainer_port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="Port of the trainer's /progress and /metrics.")
    inference_port: int = Field(8000, ge=1, le=65535, description="Port of the vLLM OpenAI server.")
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of the operator's /metrics (0: off).")
    health_port: int = Field(8081, ge=0, le=65535, description="Port of the operator's /healthz (0: off).")
    resync_seconds: float = Field(10.0, gt=0, description="Reconcile every job at least this often.")
    reconcile_workers: int = Field(
        16, ge=1, le=256, description="Jobs reconciled at the same time (a thread each, mostly waiting on the API)."
    )
    pool_workers: int = Field(
        4, ge=1, le=64, description="GRPOInferencePools reconciled at the same time (a thread each)."
    )
    progress_poll_seconds: float = Field(10.0, gt=0, description="How often the trainer's /progress is read.")
    replace_unplaceable_seconds: float = Field(
        120.0,
        ge=0,
        description=(
            "ReadWriteOnce jobs: once one pod is on a node and the other has been unschedulable this long, "
            "delete both and recreate them off that node (0: never)."
        ),
    )
    progress_timeout_seconds: float = Field(2.0, gt=0, description="Timeout of one /progress request.")
    progress_workers: int = Field(
        4, ge=1, le=64, description="Trainers' /progress read at the same time (a thread each, apart from reconciles)."
    )
    liveness_stall_seconds: float = Field(
        180.0,
        gt=0,
        description=(
            "/healthz fails when a reconcile or a /progress read has been in hand this long, or work has waited "
            "this long with none taken (an idle operator stays healthy)."
        ),
    )
    namespaces: tuple[str, ...] = Field((), description="Namespaces to watch; empty: the whole cluster.")
    check_secrets: bool = Field(
        True, description="Check that referenced Secrets exist (needs RBAC get on secrets); off: rely on pod status."
    )
    secret_namespaces: tuple[str, ...] = Field(
        (),
        description=(
            "Namespaces where referenced Secrets are checked (the operator may get Secrets only there); "
            "empty: every namespace. Jobs elsewhere are not checked, and their Created condition says so."
        ),
    )
    cluster_domain: str = Field("cluster.local", description="DNS suffix of Service names in the trainer's config.")
    log_level: str = Field("INFO", description="Python log level.")
    network_policies: bool = Field(
        False,
        description=(
            "Give every job NetworkPolicies: its vLLM reachable from its trainer only (from the namespace once it "
            "serves its result), its trainer from the operator only; both from the metrics namespaces. The chart "
            "turns it on: it knows where the operator runs."
        ),
    )
    operator_namespace: str = Field("", max_length=63, description="The operator's namespace (for NetworkPolicies).")
    operator_pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels of the operator's pods (for NetworkPolicies), e.g. a=b,c=d."
    )
    metrics_namespaces: tuple[str, ...] = Field(
        ("monitoring",), description="Namespaces whose pods may scrape the job pods' metrics (NetworkPolicies)."
    )

    @model_validator(mode="after")
    def _operator_known(self) -> OperatorSettings:
        if self.network_policies and not (self.operator_namespace and self.operator_pod_labels):
            needs = f"{ENV_PREFIX}OPERATOR_NAMESPACE and {ENV_PREFIX}OPERATOR_POD_LABELS"
            why = "whom the trainer's NetworkPolicy lets in (the chart sets them)"
            raise ValueError(f"{ENV_PREFIX}NETWORK_POLICIES needs {needs}: {why}")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from ``GRPO_<FIELD>`` variables (e.g. GRPO_TRAINER_IMAGE, GRPO_NAMESPACES=a,b,
        GRPO_OPERATOR_POD_LABELS=app=x,tier=y)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, info in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            items = [item.strip() for item in (raw or "").split(",") if item.strip()]
            if raw is None or (raw == "" and info.annotation != tuple[str, ...]):  # a list may be empty
                continue
            if info.annotation == tuple[str, ...]:
                values[name] = tuple(items)
            elif info.annotation == dict[str, str]:
                values[name] = dict(item.partition("=")[::2] for item in items)
            elif info.annotation is bool:
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ValueError(f"invalid operator environment ({ENV_PREFIX}*): {err}") from None
