"""``GRPOJob.status``: what the operator observed, following the API conventions.

Every field here is declared in the CRD: the API server silently prunes status
fields it does not know, so an undeclared field would vanish without an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, create_model
from pydantic.alias_generators import to_camel

from grpo_operator.api.base import ApiModel
from grpo_operator.api.spec import EXPORT_DESTINATIONS_MAX
from grpo_trainer.contract.progress import NAME_CHARS, NAME_LIST_ITEMS, STATUS_FIELDS

ConditionType = Literal["Failed", "Succeeded", "Suspended", "Training", "InferenceReady", "Created", "Exported"]

# The order in which conditions are kept in status.conditions. The State printer
# column shows the first condition whose status is True, so the most decisive
# state is listed first (a Failed job shows Failed, not Created).
CONDITION_ORDER: tuple[ConditionType, ...] = (
    "Failed",
    "Succeeded",
    "Suspended",
    "Training",
    "InferenceReady",
    "Created",
    "Exported",  # never the State: it is True only beside Succeeded, which is listed first
)
# The conditions that can be a job's state (the first True one, as the State column shows it).
STATE_CONDITIONS: tuple[ConditionType, ...] = tuple(c for c in CONDITION_ORDER if c != "Exported")


class Condition(ApiModel):
    """A metav1.Condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(..., max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field("", max_length=32768)
    last_transition_time: str = Field(..., description="RFC 3339 time of the last status change.")
    observed_generation: Optional[int] = Field(None, ge=0)


def _status_object(kind: type[BaseModel]) -> type[ApiModel]:
    """The status schema's mirror of a progress document's object (camelCase, every field optional)."""
    return create_model(  # type: ignore[call-overload]
        f"{kind.__name__}Status",
        __base__=ApiModel,
        __doc__=kind.__doc__,
        **{name: (Optional[f.annotation], Field(None, description=f.description))
           for name, f in kind.model_fields.items()},
    )


def _progress_field(kind: type, description: str) -> Any:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return (Optional[_status_object(kind)], Field(None, description=description))
    if kind is str:
        return (Optional[str], Field(None, description=description))
    if kind is list:
        names = list[Annotated[str, Field(max_length=NAME_CHARS)]]
        return (Optional[names], Field(None, max_length=NAME_LIST_ITEMS, description=description))
    return (Optional[kind], Field(None, ge=0, description=description) if kind is int else Field(None, description=description))


# The status fields copied from the trainer's progress document (contract.progress.STATUS_FIELDS),
# then those the operator derives from it.
ProgressStatus = create_model(  # type: ignore[call-overload]
    "ProgressStatus",
    __base__=ApiModel,
    __doc__="What the trainer last reported.",
    **{name: _progress_field(f.kind, f.description) for name, f in STATUS_FIELDS.items()},
)
DERIVED_PROGRESS_FIELDS = ("progress_percentage", "last_progress_time")
PROGRESS_STATUS_FIELDS: tuple[str, ...] = tuple(to_camel(n) for n in (*STATUS_FIELDS, *DERIVED_PROGRESS_FIELDS))


class Placement(ApiModel):
    """Where the operator has re-placed a ReadWriteOnce job's pods (both must share one node)."""

    avoid_nodes: list[str] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Nodes the pods are kept off: each held one of them while the other could not be placed "
            "beside it. Cleared when neither pod fits anywhere, so freed nodes are tried again."
        ),
    )
    replacements: int = Field(0, ge=0, description="Times both pods were deleted and recreated to be placed together.")


class KeySecretRef(ApiModel):
    """A key of a Secret in the job's namespace."""

    name: str = Field(description="The Secret's name.")
    key: str = Field(description="The key whose value is the secret.")


class Endpoint(ApiModel):
    """Where a succeeded job with serve.enabled serves its result (an OpenAI-compatible API)."""

    url: str = Field(
        description=(
            "The vLLM Service's OpenAI base URL in the cluster (the job's own, or its inference pool's), e.g. for "
            "dspy.LM(api_base=...)."
        )
    )
    model: str = Field(description="The model name to ask for: the job's name (its best adapter), else the base model.")
    api_key_secret_ref: Optional[KeySecretRef] = Field(
        None,
        description=(
            "The server's key (every request needs it: Authorization: Bearer <key>, dspy.LM(api_key=...)): "
            "generated for the job, in a Secret it owns; on an inference pool, the pool's."
        ),
    )


class ExportedDestination(ApiModel):
    """What became of one destination of spec.export."""

    destination: str = Field(
        description="The destination as the job names it: claim NAME:/path, hub owner/name, s3://bucket/prefix."
    )
    spec_hash: str = Field(description="Hash of the destination's settings (merged included) that were exported.")
    merged: bool = Field(False, description="merged/ (the base model with the adapter merged in) was written too.")
    location: Optional[str] = Field(
        None, description="Where it went: the claim's folder, owner/name@commit on the hub, s3://bucket/prefix."
    )
    exported_at: Optional[str] = Field(None, description="When it was exported.")
    step: Optional[int] = Field(None, ge=0, description="The step of the exported result (0: the base model).")
    error: Optional[str] = Field(None, description="Why the last attempt failed (no location then).")


ExportPhase = Literal["Exporting", "Exported", "Failed", "Cancelled"]


class ExportStatus(ApiModel):
    """The export of a succeeded job's result (spec.export), run by pods <job>-export-<attempt>."""

    spec_hash: str = Field(description="Hash of the spec.export this export carries out.")
    phase: ExportPhase = Field(
        description="Exporting, Exported (every destination), Failed (retries spent) or Cancelled."
    )
    attempt: int = Field(
        0, ge=0, description="The current export pod's number, <job>-export-<attempt>; counts every pod."
    )
    failures: int = Field(0, ge=0, description="Failed export pods of this spec.export (against its backoffLimit).")
    pod: Optional[str] = Field(
        None, description="The current (or last) export pod, kept for its logs until the next export."
    )
    destinations: list[ExportedDestination] = Field(
        default_factory=list,
        max_length=EXPORT_DESTINATIONS_MAX,
        description="One entry per destination of spec.export, in its order.",
    )


class GRPOJobStatus(ProgressStatus):
    """Observed state and progress of a GRPOJob."""

    observed_generation: Optional[int] = Field(None, description="metadata.generation the status was computed for.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Created, InferenceReady, Training, Suspended, Succeeded, Failed, Exported.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    max_steps: Optional[int] = Field(None, ge=0, description="GRPO steps the job will run (grpo.num_train_steps).")
    progress_percentage: Optional[int] = Field(None, ge=0, le=100, description="step / maxSteps, in percent.")
    start_time: Optional[str] = Field(
        None,
        description=(
            "When the trainer was first seen running (activeDeadlineSeconds counts from here); "
            "cleared on suspend, so a resumed job's deadline counts afresh."
        ),
    )
    completion_time: Optional[str] = Field(None, description="When the job finished (succeeded or failed).")
    last_progress_time: Optional[str] = Field(
        None, description="When the trainer last reported progress (the document's updated_at, else when it was read)."
    )
    restarts: int = Field(0, ge=0, description="Trainer pod failures restarted (counted against runPolicy.backoffLimit).")
    interruptions: int = Field(
        0,
        ge=0,
        description=(
            "Trainer pods stopped by a signal after a checkpoint and resumed (not counted against "
            "runPolicy.backoffLimit)."
        ),
    )
    inference_restarts: int = Field(0, ge=0, description="vLLM pod restarts.")
    endpoint: Optional[Endpoint] = Field(None, description="serve.enabled: where the succeeded job serves its result.")
    export: Optional[ExportStatus] = Field(
        None, description="spec.export: where the result was exported, and how it went."
    )
    placement: Optional[Placement] = Field(
        None, description="ReadWriteOnce jobs: the operator's re-placements of both pods onto one node."
    )
    run_path: Optional[str] = Field(
        None,
        max_length=512,
        description=(
            "Where the job's run directory (adapters, checkpoints, result/) is on its volume: runs/<job name>; "
            "'.' for the volume's root (jobs started by an operator from before per-job folders keep it). "
            "Decided when the job is first seen and kept."
        ),
    )
    trainer_pod: Optional[str] = Field(None, description="Name of the current trainer pod.")
    inference_pod: Optional[str] = Field(
        None, description="Name of the current vLLM pod (serving from an inference pool: the pool's server)."
    )
    inference_pool: Optional[str] = Field(
        None, description="spec.inference.pool: the GRPOInferencePool that serves the job (it has no vLLM pod)."
    )
