"""``GRPOJob.status``: what the operator observed, following the API conventions.

Every field here is declared in the CRD: the API server silently prunes status
fields it does not know, so an undeclared field would vanish without an error.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import ApiModel

ConditionType = Literal["Failed", "Succeeded", "Suspended", "Training", "InferenceReady", "Created"]

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
)


class Condition(ApiModel):
    """A metav1.Condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(..., max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field("", max_length=32768)
    last_transition_time: str = Field(..., description="RFC 3339 time of the last status change.")
    observed_generation: Optional[int] = Field(None, ge=0)


class GRPOJobStatus(ApiModel):
    """Observed state and progress of a GRPOJob."""

    observed_generation: Optional[int] = Field(None, description="metadata.generation the status was computed for.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Created, InferenceReady, Training, Suspended, Succeeded, Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    step: Optional[int] = Field(None, ge=0, description="Completed GRPO steps.")
    max_steps: Optional[int] = Field(None, ge=0, description="GRPO steps the job will run (grpo.num_train_steps).")
    train_reward: Optional[float] = Field(None, description="Mean reward of the latest step's rollouts.")
    train_reward_std: Optional[float] = Field(None, description="Std of the latest step's rewards.")
    val_score: Optional[float] = Field(None, description="Latest validation score.")
    best_val_score: Optional[float] = Field(None, description="Best validation score so far.")
    baseline_val_score: Optional[float] = Field(None, description="Validation score before training (step 0).")
    adapter_version: Optional[str] = Field(None, description="Adapter vLLM currently serves, e.g. policy-v12.")
    best_adapter_version: Optional[str] = Field(None, description="Adapter with the best validation score.")
    best_step: Optional[int] = Field(None, ge=0, description="Step of the best adapter.")
    progress_percentage: Optional[int] = Field(None, ge=0, le=100)
    estimated_remaining_seconds: Optional[int] = Field(None, ge=0)
    start_time: Optional[str] = Field(None, description="When the trainer first started.")
    completion_time: Optional[str] = Field(None, description="When the job finished (succeeded or failed).")
    last_progress_time: Optional[str] = Field(None, description="When the trainer last reported progress.")
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
    trainer_pod: Optional[str] = Field(None, description="Name of the current trainer pod.")
    inference_pod: Optional[str] = Field(None, description="Name of the current vLLM pod.")
