"""The run's progress document: what the trainer writes and every reader parses.

One JSON document (``Progress``) says where the run is; the trainer rewrites it
atomically to ``<run_dir>/progress.json`` on every change (the local runner reads
the file) and serves it at ``/progress`` (the operator polls it: it has no write
access to the trainer). The board that keeps it is grpo_trainer.run.progress_board.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
CODE_SUMMARY_CHARS = 1024
# A status list of names (the trained predictors) keeps at most this many, each cut to NAME_CHARS.
NAME_LIST_ITEMS = 64
NAME_CHARS = 253
MAX_WARNINGS = 10  # the newest kept

Phase = Literal["starting", "baseline", "rollout", "train", "sync", "validate", "done", "stopped", "failed"]
TimedPhase = Literal[
    "rollout",
    "reward",
    "rollout_wait",
    "train",
    "forward_backward",
    "optimizer",
    "save",
    "load",
    "first_request",
    "validate",
    "step",
]
# Why a job is invalid (the trainer exits exit_codes.INVALID_JOB): the reason of its Failed condition.
# ForeignRunDirectory: its run directory holds another job's run (grpo_trainer.run.ownership).
ErrorReason = Literal["InvalidCode", "InvalidProgram", "InvalidMetric", "InvalidData", "ForeignRunDirectory"]
PHASES: tuple[str, ...] = get_args(Phase)
TIMED_PHASES: tuple[str, ...] = get_args(TimedPhase)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseTimings(_Doc):
    """Seconds each phase took in the most recent step that ran it (None: not run yet)."""

    # "validate" would shadow BaseModel.validate: the attribute is validate_, the JSON key "validate"
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    rollout: Optional[float] = Field(None, description="Generation and scoring of the step's rollouts (wall time).")
    reward: Optional[float] = Field(
        None, description="Metric calls of the rollouts, summed (they run inside rollout, concurrently)."
    )
    rollout_wait: Optional[float] = Field(
        None,
        description=(
            "Time the update waited for its rollouts: all of rollout when sequential, only the part not "
            "hidden behind the previous update when rollouts overlap training."
        ),
    )
    train: Optional[float] = Field(None, description="The whole update (forward_backward + optimizer + collectives).")
    forward_backward: Optional[float] = None
    optimizer: Optional[float] = Field(None, description="Gradient clipping, optimizer and scheduler steps.")
    save: Optional[float] = None
    load: Optional[float] = None
    first_request: Optional[float] = None
    validate_: Optional[float] = Field(None, alias="validate")
    step: Optional[float] = Field(
        None, description="Wall time from the end of the previous step to the end of this one."
    )


class StepDiagnostics(_Doc):
    """The last step's update and rollouts, as a GRPO practitioner reads them every step (TRL logs the same)."""

    loss: float
    grad_norm: float = Field(description="Global gradient norm before clipping (mean over the step's optimizer steps).")
    learning_rate: float
    clip_fraction: float = Field(description="Share of trained tokens whose ratio was clipped (low + high).")
    clip_fraction_low: float = Field(description="... clipped below 1 - epsilon, on a negative advantage.")
    clip_fraction_high: float = Field(description="... clipped above 1 + epsilon_high, on a positive advantage.")
    mean_kl: float = Field(description="Mean per-token KL to the reference (0 when beta is 0 and no reference runs).")
    mean_ratio: float = Field(description="Mean policy/old-policy probability ratio.")
    mean_importance_weight: float = Field(description="Mean trainer/sampler importance weight (vLLM mismatch).")
    zero_variance_group_share: float = Field(description="Share of the step's groups skipped: every reward equal.")
    completion_length_mean: float = Field(description="Mean completion tokens of the step's rollouts.")
    completion_length_max: int


# Where grpo_trainer.run.result writes the result, relative to the run directory (the operator
# renders a serving vLLM pod from the same names).
RESULT_DIR = "result"
RESULT_ADAPTER_DIR = f"{RESULT_DIR}/adapter"
RESULT_FILE = "result.json"  # in RESULT_DIR: the result's summary (an export writes it last)


def result_model_name(job: str) -> str:
    """The model name vLLM serves a job's result adapter under: the job's own name."""
    return job


class RunResult(_Doc):
    """Where the run's result is on its volume (grpo_trainer.run.result) and what it holds."""

    path: str = Field(description="The result folder, relative to the run directory (the job volume's root).")
    adapter: Optional[str] = Field(
        None,
        description=(
            "The best adapter's PEFT folder, relative to the run directory; none while the base model scores best."
        ),
    )
    step: int = Field(description="The step of that adapter (0: the base model).")
    val_score: Optional[float] = Field(None, description="Its validation score.")
    base_model: str = Field(description="The model the adapter applies to (the job's model).")
    finished: bool = Field(False, description="The run has ended; before that, the best result so far.")


class Progress(_Doc):
    """Where a run is. JSON keys are snake_case and flat (what grpo_operator.controller.progress_poll reads); score maps are keyed by step."""

    job: str
    phase: Phase = "starting"
    step: int = Field(0, description="Completed optimizer steps.")
    max_steps: int
    reward_mean: Optional[float] = Field(None, description="Mean rollout reward of the last step.")
    reward_std: Optional[float] = None
    reward_means: dict[int, float] = Field(default_factory=dict, description="Mean rollout reward per step.")
    train_scores: dict[int, float] = Field(default_factory=dict)
    val_scores: dict[int, float] = Field(default_factory=dict)
    baseline_val_score: Optional[float] = None
    val_score: Optional[float] = Field(None, description="Latest validation score.")
    best_val_score: Optional[float] = None
    best_step: Optional[int] = Field(None, description="Step of the best validation score (0: the base model).")
    adapter_version: Optional[str] = Field(None, description="vLLM model name rollouts use now, e.g. policy-v12.")
    adapter_step: Optional[int] = None
    best_adapter_version: Optional[str] = Field(None, description="Name of the best adapter by validation score.")
    timings: PhaseTimings = Field(default_factory=PhaseTimings)
    tokens_generated: int = 0
    tokens_trained: int = 0
    rollout_failures: dict[str, int] = Field(default_factory=dict, description="Failed rollouts by kind, run total.")
    skipped_groups: int = Field(0, description="Groups with zero reward variance (no gradient), run total.")
    diagnostics: Optional[StepDiagnostics] = Field(None, description="The last step's update and rollout diagnostics.")
    started_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    eta_seconds: Optional[float] = None
    finished: bool = False
    error: Optional[str] = None
    error_reason: Optional[ErrorReason] = Field(
        None, description="Set when the job itself is wrong (no retry helps): which part of it."
    )
    code: Optional[str] = Field(
        None, max_length=CODE_SUMMARY_CHARS, description="The job's spec.code as imported: hashes, commits, packages."
    )
    trained_predictors: list[str] = Field(
        default_factory=list,
        description="The program's predictors the local model drives and trains (others have an LM of their own).",
    )
    result: Optional[RunResult] = Field(None, description="The best result so far, written to the volume's result/.")
    checkpoint_step: Optional[int] = Field(
        None, description="Step of the newest checkpoint written (a rerun resumes there)."
    )
    checkpoint_failures: int = Field(
        0, description="Checkpoints that could not be written (full or failing volume), run total."
    )
    checkpoint_error: Optional[str] = Field(
        None, description="Why the last checkpoint could not be written ('step N: ...'); cleared by the next one."
    )
    loaded_adapters: list[str] = Field(
        default_factory=list,
        max_length=NAME_LIST_ITEMS,
        description=(
            "The run's adapter versions vLLM lists (GET /v1/models), oldest first, as of the trainer's last look "
            "or its own load and unload since: what the run holds of the server's adapter slots."
        ),
    )
    served_check: Optional[dict[str, Any]] = Field(
        None,
        description="End-of-run proof that vLLM serves the adapter on the volume (trainer/grpo_trainer/vllm/served_check.py).",
    )
    warnings: list[str] = Field(
        default_factory=list,
        max_length=MAX_WARNINGS,
        description="What went wrong without failing the run, newest last, e.g. a foreign adapter vLLM served "
        "under one of the run's names (replaced, never trained on).",
    )

    @classmethod
    def read(cls, run_dir: str | Path) -> Progress | None:
        """The document a trainer last wrote in ``run_dir``; None before the first write."""
        path = Path(run_dir) / PROGRESS_FILE
        return cls.model_validate_json(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass(frozen=True)
class StatusField:
    """A value of this document that the operator copies into ``GRPOJob.status``."""

    source: str  # the Progress field it is read from
    # a model: an object in the status; list: a list of names (NAME_LIST_ITEMS of at most NAME_CHARS)
    kind: type[int] | type[float] | type[str] | type[list] | type[BaseModel]
    description: str  # also the CRD's description of the status field


# status field (snake_case here, camelCase in the API) -> where it comes from. The one table
# the trainer's document, the operator's reader, the status model and the CRD all follow.
STATUS_FIELDS: dict[str, StatusField] = {
    "step": StatusField("step", int, "Completed GRPO steps."),
    "train_reward": StatusField("reward_mean", float, "Mean reward of the latest step's rollouts."),
    "train_reward_std": StatusField("reward_std", float, "Std of the latest step's rewards."),
    "val_score": StatusField("val_score", float, "Latest validation score."),
    "best_val_score": StatusField("best_val_score", float, "Best validation score so far."),
    "baseline_val_score": StatusField("baseline_val_score", float, "Validation score before training (step 0)."),
    "adapter_version": StatusField("adapter_version", str, "Adapter vLLM currently serves, e.g. policy-v12."),
    "best_adapter_version": StatusField("best_adapter_version", str, "Adapter with the best validation score."),
    "best_step": StatusField("best_step", int, "Step of the best adapter."),
    "estimated_remaining_seconds": StatusField("eta_seconds", int, "Estimated seconds until the last step ends."),
    "code": StatusField(
        "code", str, "The code spec.code brought, as the trainer imported it: archive hashes, git commits, pip packages."
    ),
    "result": StatusField(
        "result", RunResult, "The best result so far on the job's volume (result/): adapter, step, score, base model."
    ),
    "loaded_adapters": StatusField(
        "loaded_adapters",
        list,
        "The job's adapter versions its vLLM server (its pool's) lists, as the trainer last saw: what it holds of "
        "the server's adapter slots.",
    ),
    "trained_predictors": StatusField(
        "trained_predictors",
        list,
        "The program's predictors the local model drives and trains; a predictor with an LM of its own keeps it "
        "and is not trained.",
    ),
}

# The scalar fields of a finished run: what fits a pod's termination message (Kubernetes keeps
# 4 KiB). What the status is made of, plus how the run ended.
FINAL_FIELDS = frozenset(
    {f.source for f in STATUS_FIELDS.values()} | {"job", "phase", "max_steps", "finished", "error", "error_reason", "updated_at"}
)
TERMINATION_MESSAGE_BYTES = 4096


def termination_message(progress: Progress) -> str:
    """The run's last word, for the pod's termination message (the operator reads it from the pod status).

    The operator polls /progress every few seconds and can miss what happens between
    its last poll and the exit -- the final validation, the last step, the error that
    ended the run. Kubernetes keeps this text in the terminated container's status.
    """
    doc = progress.model_dump(mode="json", include=set(FINAL_FIELDS))
    text = json.dumps(doc, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_MESSAGE_BYTES:
        doc.pop("trained_predictors", None)  # known since the start: the operator has read it from /progress
        text = json.dumps(doc, separators=(",", ":"))
    excess = len(text.encode()) - TERMINATION_MESSAGE_BYTES
    if excess > 0 and doc.get("error"):
        doc["error"] = doc["error"][: max(0, len(doc["error"]) - excess - 3)] + "..."
        text = json.dumps(doc, separators=(",", ":"))
    return text
