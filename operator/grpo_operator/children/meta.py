"""Names, labels and owner references shared by every child of a GRPOJob.

Names are deterministic (pods per attempt), so a handler that runs twice — after
an operator restart, or a retry — creates the same object twice and gets 409
AlreadyExists instead of a duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from grpo_operator.api.job import API_VERSION, KIND
from grpo_operator.api.names import (
    COMPONENT_LABEL,
    DNS_LABEL_MAX,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    OPERATOR_PREFIX,
)
from grpo_operator.api.spec import GRPOJobSpec

# The labels are reserved in the API (grpo_operator.api.names): a job's own pod labels cannot set them.
OPERATOR_NAME = "grpo-operator"
APP_NAME = "grpojob"
JOB_LABEL = f"{OPERATOR_PREFIX}job"
ATTEMPT_LABEL = f"{OPERATOR_PREFIX}attempt"

TRAINER = "trainer"
INFERENCE = "inference"
STORAGE = "storage"
CONFIG = "config"


@dataclass(frozen=True)
class Job:
    """The parsed GRPOJob a builder works from: identity (for owner references), spec, and the
    nodes its pods are kept off (``status.placement.avoidNodes``, decided by the lifecycle)."""

    name: str
    namespace: str
    uid: str
    spec: GRPOJobSpec
    avoid_nodes: tuple[str, ...] = ()


def dns_label(base: str, suffix: str) -> str:
    """``<base>-<suffix>`` as an RFC 1035 label (Service names): ≤ 63 chars, starting with a letter.

    Long or digit-led bases are shortened with a hash of the full name, so two
    different jobs never collide.
    """
    name = f"{base}-{suffix}"
    if len(name) <= DNS_LABEL_MAX and name[0].isalpha():
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:6]
    keep = DNS_LABEL_MAX - len(suffix) - len(digest) - 4
    return f"j-{base[:keep].rstrip('-')}-{digest}-{suffix}"


def pvc_name(job: Job) -> str:
    """The claim both pods mount: the user's existing one, or the job's own."""
    return job.spec.storage.existing_claim or f"{job.name}-run"


def config_map_name(job: Job) -> str:
    return f"{job.name}-config"


def service_name(job: Job) -> str:
    return dns_label(job.name, "vllm")


def trainer_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-trainer-{attempt}"


def inference_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-inference-{attempt}"


def selector_labels(job: Job, component: str) -> dict[str, str]:
    """Labels that identify one component of one job (Service and affinity selectors)."""
    return {JOB_LABEL: job.name, COMPONENT_LABEL: component}


def labels(job: Job, component: str) -> dict[str, str]:
    """The common labels of a child."""
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: job.name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: OPERATOR_NAME,
        JOB_LABEL: job.name,
    }


def owner_reference(job: Job) -> dict[str, Any]:
    """Makes the job the controller of a child: deleting the job garbage-collects it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(job: Job, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job)],
    }
    meta.update(extra)
    return meta
