"""The GRPOJob API: pydantic models (the source of truth), the CRD generated from them,
and the translation of a job into the trainer's config contract."""

from grpo_operator.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, GRPOJob, InvalidJob, parse_job, parse_spec
from grpo_operator.api.spec import GRPOJobSpec
from grpo_operator.api.status import GRPOJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "GRPOJob",
    "GRPOJobSpec",
    "GRPOJobStatus",
    "InvalidJob",
    "parse_job",
    "parse_spec",
]
