"""Names, labels and owner references shared by every child of a GRPOJob.

Names are deterministic (pods per attempt), so a handler that runs twice — after
an operator restart, or a retry — creates the same object twice and gets 409
AlreadyExists instead of a duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Union

from grpo_operator.api.job import API_VERSION, KIND
from grpo_operator.api.names import (
    COMPONENT_LABEL,
    DNS_LABEL_MAX,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    OPERATOR_PREFIX,
)
from grpo_operator.api.pool import KIND as POOL_KIND
from grpo_operator.api.pool import GRPOInferencePoolSpec
from grpo_operator.api.spec import GRPOJobSpec
from grpo_operator.resolve import pool_claim, run_claim

# The labels are reserved in the API (grpo_operator.api.names): a job's own pod labels cannot set them.
OPERATOR_NAME = "grpo-operator"
APP_NAME = "grpojob"
POOL_APP_NAME = "grpoinferencepool"
JOB_LABEL = f"{OPERATOR_PREFIX}job"
POOL_LABEL = f"{OPERATOR_PREFIX}pool"  # a pool's own children
# On the trainer pods of the jobs a pool serves: what the pool's NetworkPolicy admits.
POOL_CLIENT_LABEL = f"{OPERATOR_PREFIX}inference-pool"
# ... and the uid of the pool it was rendered for: its key's Secret is named by it, so a trainer made for an
# earlier pool of the name (deleted and created again) holds a key the new pool refuses.
POOL_UID_ANNOTATION = f"{OPERATOR_PREFIX}inference-pool-uid"
ATTEMPT_LABEL = f"{OPERATOR_PREFIX}attempt"

TRAINER = "trainer"
INFERENCE = "inference"
EXPORT = "export"
STORAGE = "storage"
CONFIG = "config"
CREDENTIALS = "credentials"
NETWORK = "network"


@dataclass(frozen=True)
class PoolBinding:
    """The inference pool serving a job (spec.inference.pool), as the operator found it: whose key the job's
    trainer reads (named by the pool's uid), which claim holds the job's run directory, and whether the
    trainer must run on the pool's node (a ReadWriteOnce claim)."""

    name: str
    uid: str
    claim: str
    access_mode: str


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
    pool: Optional[PoolBinding] = None  # spec.inference.pool, once found in the job's namespace and matching


@dataclass(frozen=True)
class Pool:
    """The parsed GRPOInferencePool a builder works from."""

    name: str
    namespace: str
    uid: str
    spec: GRPOInferencePoolSpec


Owner = Union[Job, Pool]


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


def pvc_name(owner: Owner) -> str:
    """The claim a job's pods mount (the user's existing one, its pool's, or the job's own); a pool's."""
    if isinstance(owner, Pool):
        return pool_claim(owner.name, owner.spec)
    return owner.pool.claim if owner.pool is not None else run_claim(owner.name, owner.spec)


def binding(name: str, uid: str, spec: GRPOInferencePoolSpec) -> PoolBinding:
    """What a job on the pool ``name`` needs of it."""
    return PoolBinding(name=name, uid=uid, claim=pool_claim(name, spec), access_mode=spec.storage.access_mode)


def config_map_name(job: Owner) -> str:
    return f"{job.name}-config"


def vllm_service_name(name: str) -> str:
    """The vLLM Service of the job (the pool) ``name``."""
    return dns_label(name, "vllm")


def service_name(job: Owner) -> str:
    return vllm_service_name(job.name)


def key_secret_name(name: str, uid: str) -> str:
    """The Secret of a job's (a pool's) vLLM key. Named by the owner's uid: one re-applied under the name never
    gets an earlier one's key, and a create that meets an existing Secret of this name met its own."""
    return f"{name}-vllm-key-{uid[:8]}"


def api_key_secret_name(job: Owner) -> str:
    return key_secret_name(job.name, job.uid)


def pool_server_name(pool: str, replica: int) -> str:
    """The vLLM pod of one replica of the pool named ``pool``."""
    return f"{pool}-vllm-{replica}"


def pool_pod_name(pool: Pool, replica: int) -> str:
    return pool_server_name(pool.name, replica)


def network_policy_name(job: Owner, component: str) -> str:
    """The NetworkPolicy that admits traffic to one component's pods (``serve``: the vLLM pod once it serves)."""
    return f"{job.name}-{component}"


def trainer_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-trainer-{attempt}"


def inference_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-inference-{attempt}"


def export_pod_name(job: Job, attempt: int) -> str:
    return f"{job.name}-export-{attempt}"


def _owner_label(owner: Owner) -> str:
    return POOL_LABEL if isinstance(owner, Pool) else JOB_LABEL


def selector_labels(job: Owner, component: str) -> dict[str, str]:
    """Labels that identify one component of one job or pool (Service and affinity selectors)."""
    return {_owner_label(job): job.name, COMPONENT_LABEL: component}


def labels(job: Owner, component: str) -> dict[str, str]:
    """The common labels of a child."""
    return {
        NAME_LABEL: POOL_APP_NAME if isinstance(job, Pool) else APP_NAME,
        INSTANCE_LABEL: job.name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: OPERATOR_NAME,
        _owner_label(job): job.name,
    }


def owner_reference(job: Owner) -> dict[str, Any]:
    """Makes the job (the pool) the controller of a child: deleting it garbage-collects the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": POOL_KIND if isinstance(job, Pool) else KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(job: Owner, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job)],
    }
    meta.update(extra)
    return meta
