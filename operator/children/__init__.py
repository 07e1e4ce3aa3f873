"""Pure builders of a GRPOJob's children: (job, settings) -> Kubernetes manifests (dicts).

No I/O here; the handlers create what these return.
"""

from .config import cluster_layout, config_map
from .inference import inference_pod, inference_service, vllm_server_spec
from .meta import (
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    INFERENCE,
    JOB_LABEL,
    MANAGED_BY_LABEL,
    OPERATOR_NAME,
    TRAINER,
    Job,
    config_map_name,
    inference_pod_name,
    pvc_name,
    service_name,
    trainer_pod_name,
)
from .trainer import referenced_secrets, trainer_command, trainer_pod
from .volume import persistent_volume_claim, user_claims

__all__ = [
    "ATTEMPT_LABEL",
    "COMPONENT_LABEL",
    "INFERENCE",
    "JOB_LABEL",
    "MANAGED_BY_LABEL",
    "OPERATOR_NAME",
    "TRAINER",
    "Job",
    "cluster_layout",
    "config_map",
    "config_map_name",
    "inference_pod",
    "inference_pod_name",
    "inference_service",
    "persistent_volume_claim",
    "pvc_name",
    "referenced_secrets",
    "service_name",
    "trainer_command",
    "trainer_pod",
    "trainer_pod_name",
    "user_claims",
    "vllm_server_spec",
]
