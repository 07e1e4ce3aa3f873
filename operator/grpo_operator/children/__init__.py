"""Pure builders of a GRPOJob's children: (job, settings) -> Kubernetes manifests (dicts),
rendering the job's one resolution (grpo_operator.resolve).

No I/O here; the handlers create what these return.
"""

from grpo_operator.children.config import cluster_target, config_map, pool_target, resolved
from grpo_operator.children.credentials import api_key_ref, api_key_secret
from grpo_operator.children.export import export_pod
from grpo_operator.children.inference import inference_pod, inference_service, result_endpoint
from grpo_operator.children.meta import (
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    EXPORT,
    INFERENCE,
    JOB_LABEL,
    MANAGED_BY_LABEL,
    OPERATOR_NAME,
    POOL_CLIENT_LABEL,
    POOL_LABEL,
    POOL_UID_ANNOTATION,
    TRAINER,
    Job,
    Pool,
    PoolBinding,
    api_key_secret_name,
    binding,
    config_map_name,
    export_pod_name,
    inference_pod_name,
    pool_pod_name,
    pool_server_name,
    pvc_name,
    service_name,
    trainer_pod_name,
)
from grpo_operator.children.network import network_policies, serve_network_policy
from grpo_operator.children.podspec import SPEC_HASH_ANNOTATION, co_located
from grpo_operator.children.pool import pool_children, pool_endpoint, pool_pod
from grpo_operator.children.trainer import referenced_secrets, trainer_pod
from grpo_operator.children.volume import persistent_volume_claim, user_claims, user_config_maps

__all__ = [
    "ATTEMPT_LABEL",
    "COMPONENT_LABEL",
    "EXPORT",
    "INFERENCE",
    "JOB_LABEL",
    "MANAGED_BY_LABEL",
    "SPEC_HASH_ANNOTATION",
    "OPERATOR_NAME",
    "POOL_CLIENT_LABEL",
    "POOL_LABEL",
    "POOL_UID_ANNOTATION",
    "TRAINER",
    "Job",
    "Pool",
    "PoolBinding",
    "binding",
    "pool_children",
    "pool_endpoint",
    "pool_pod",
    "pool_pod_name",
    "pool_server_name",
    "pool_target",
    "api_key_ref",
    "api_key_secret",
    "api_key_secret_name",
    "cluster_target",
    "co_located",
    "user_config_maps",
    "config_map",
    "config_map_name",
    "export_pod",
    "export_pod_name",
    "inference_pod",
    "inference_pod_name",
    "inference_service",
    "network_policies",
    "persistent_volume_claim",
    "pvc_name",
    "referenced_secrets",
    "resolved",
    "result_endpoint",
    "serve_network_policy",
    "service_name",
    "trainer_pod",
    "trainer_pod_name",
    "user_claims",
]
