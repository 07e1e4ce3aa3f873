"""The ``GRPOJob`` resource and the one entry point that parses it.

``parse_job`` is what every reader of a manifest calls (operator handlers, the
local runner, tests), so every layer rejects bad input with the same message:
the field's path in the manifest and what to do about it.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from grpo_operator.api.names import DNS_LABEL, JOB_NAME_MAX
from grpo_operator.api.spec import OWN_CLAIM_SUFFIX, GRPOJobSpec
from grpo_operator.api.status import GRPOJobStatus
from grpo_trainer.contract.rules import Rule, RuledModel, RuleViolation

GROUP = "grpo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GRPOJob"
PLURAL = "grpojobs"
SINGULAR = "grpojob"
SHORT_NAMES = ("grpoj",)


class ObjectMeta(BaseModel):
    """The part of metadata the API cares about; the rest passes through."""

    model_config = ConfigDict(extra="allow")

    name: Optional[str] = None  # held to what every child accepts by GRPOJob's rule
    namespace: Optional[str] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


def _exports_to_own_volume(job: GRPOJob) -> bool:
    """A claim destination of spec.export names the job's own volume (``<job>-run``), which the export reads."""
    export, own = job.spec.export, f"{job.metadata.name}{OWN_CLAIM_SUFFIX}"
    if export is None or job.spec.storage.existing_claim or not job.metadata.name:
        return False  # an existingClaim is checked in the spec (storage.existingClaim)
    return any(d.claim is not None and d.claim.claim_name == own for d in export.destinations)


# Rules that need the job's name: in the CRD at the schema's root, where CEL sees metadata.name.
OWN_VOLUME_RULE = Rule(
    cel=(
        "!has(self.spec.export) || !has(self.metadata.name) || (has(self.spec.storage) && "
        "has(self.spec.storage.existingClaim)) || self.spec.export.destinations.all(d, !has(d.claim) || "
        f"d.claim.claimName != self.metadata.name + '{OWN_CLAIM_SUFFIX}')"
    ),
    message=(
        f"a claim destination may not be the job's own volume (<job>{OWN_CLAIM_SUFFIX}), which the export reads; "
        "name another claim"
    ),
    check=lambda job: not _exports_to_own_volume(job),
    field="spec.export.destinations",
)


def _valid_name(name: Optional[str]) -> bool:
    return name is None or (len(name) <= JOB_NAME_MAX and re.match(DNS_LABEL, name) is not None)


def name_rule(kind: str, names: str) -> Rule:
    """The API server takes any DNS subdomain as a custom resource's name (253 characters, dots); a job's or a
    pool's name is also a label value of its children and the stem of their names, the Service's an RFC 1035
    label. ``names``: the children it names."""
    return Rule(
        cel=f"size(self.metadata.name) <= {JOB_NAME_MAX} && self.metadata.name.matches('{DNS_LABEL}')",
        message=(
            f"a {kind}'s name is at most {JOB_NAME_MAX} lowercase letters, digits and '-', starting and ending with a "
            f"letter or digit, no dots: it labels the {kind}'s pods and names its {names}; rename it"
        ),
        check=lambda obj: _valid_name(obj.metadata.name),
        field="metadata.name",
    )


JOB_NAME_RULE = name_rule("job", "volume, ConfigMap and Service")


class GRPOJob(RuledModel):
    """A GRPO optimisation of a DSPy program with LoRA, trained on GPUs and sampled through vLLM."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rules = (JOB_NAME_RULE, OWN_VOLUME_RULE)

    api_version: Literal["grpo.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["GRPOJob"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: GRPOJobSpec
    status: Optional[GRPOJobStatus] = None


class InvalidJob(ValueError):
    """A manifest that fails validation; ``problems`` are 'path: message' lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid GRPOJob:\n  " + "\n  ".join(problems))


def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item in ("function-after[_check_rules()]", "function-before[_no_inline_secrets()]"):
            continue
        elif isinstance(item, str) and (item.startswith("function-") or item.startswith("literal[") or item in ("int", "str")):
            continue
        else:
            parts.append(str(item))
    return ".".join(parts)


def format_errors(err: ValidationError) -> list[str]:
    """One 'spec.path.to.field: message' line per problem."""
    lines = []
    for e in err.errors(include_url=False):
        path, msg = _path(tuple(e["loc"])), e["msg"].removeprefix("Value error, ")
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, RuleViolation) and cause.field:
            # a cross-field rule names the field inside the object it checks
            path, msg = ".".join(p for p in (path, cause.field) if p), msg.removeprefix(f"{cause.field}: ")
        lines.append(f"{path}: {msg}")
    return lines


def parse_job(doc: dict[str, Any]) -> GRPOJob:
    """Validate a manifest (dict) into a GRPOJob, or raise InvalidJob."""
    try:
        return GRPOJob.model_validate(doc)
    except ValidationError as err:
        raise InvalidJob(format_errors(err)) from None


def parse_spec(spec: dict[str, Any]) -> GRPOJobSpec:
    """Validate just a spec (what Kopf hands a handler)."""
    try:
        return GRPOJobSpec.model_validate(spec)
    except ValidationError as err:
        raise InvalidJob([f"spec.{line}" for line in format_errors(err)]) from None
