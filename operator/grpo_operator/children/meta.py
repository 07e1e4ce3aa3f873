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
from grpo_operator.resolve import run_claim

# The labels are reserved in the API (grpo_operator.api.names): a job's own pod labels cannot set them.
OPERATOR_NAME = "grpo-operator"
APP_NAME = "grpojob"
JOB_LABEL = f"{OPERATOR_PREFIX}job"
ATTEMPT_LABEL = f"{OPERATOR_PREFIX}attempt"

TRAINER = "trainer"
INFERENCE = "inference"
EXPORT = "export"
STORAGE = "storage"
CONFIG = "config"
CREDENTIALS = "credentials"
NETWORK = "network"


@dataclass(frozen=True)
class Job:
    """The parsed GRPOJob a builder works from: identity (for owner references), spec, and what the
    lifecycle decided from its status: the nodes its pods are kept off (``status.placement.avoidNodes``),
    and whether its run directory is its volume's root (``status.runPath``: pods first created by an
    operator from before per-job folders)."""

    name: str
    namespace: str
    uid: str
    spec: GRPOJobSpec
    avoid_nodes: tuple[str, ...] = ()
    claim_root: bool = False


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
    return run_claim(job.name, job.spec)


def config_map_name(job: Job) -> str:
    return f"{job.name}-config"


def service_name(job: Job) -> str:
    return dns_label(job.name, "vllm")


def api_key_secret_name(job: Job) -> str:
    """The Secret of the job's vLLM key. Named by the job's uid: a job re-applied under the name never gets an
    earlier one's key, and a create that meets an existing Secret of this name met this job's own."""
    return f"{job.name}-vllm-key-{job.uid[:8]}"


def network_policy_name(job: Job, component: str) -> str:
    """The NetworkPolicy that admits traffic to one component's pods (``serve``: the vLLM pod once it serves)."""
    return f"{job.name}-{component}"


def trainer_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-trainer-{attempt}"


def inference_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-inference-{attempt}"


def export_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-export-{attempt}"


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
