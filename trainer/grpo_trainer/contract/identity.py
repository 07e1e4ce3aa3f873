"""Whose run a run directory holds.

A run directory (a job's folder on its volume, grpo-local's run directory) is resumed
only by the job that started it: the same name, and the same fields that define the
run (model, program, metric, data, grpo, trainKwargs; hashed field by field, so a
refusal can name what differs). The uid may differ: a job deleted and applied again
under its name (a volume kept with ``storage.retainOnDelete``) resumes its own run.
The operator and the local runner put the job's identity in the trainer's config
(``TrainerConfig.owner``); the trainer records it in the directory (``job.json``) and
in every checkpoint, and refuses another one before any model loads
(grpo_trainer.run.ownership).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

# The spec's fields that define a run, by their API names; resolve.run_definition hashes each.
RUN_DEFINING_FIELDS = ("model", "program", "metric", "data", "grpo", "trainKwargs")


def field_hash(value: Any) -> str:
    """SHA-256 of a field's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JobIdentity(BaseModel):
    """A job as its run directory records it: ``<run_dir>/job.json`` and ``job`` in every checkpoint's state.json."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: Optional[str] = Field(None, description="None: a local run (grpo-local).")
    uid: Optional[str] = Field(None, description="The GRPOJob object's uid; None: a local run.")
    definition: dict[str, str] = Field(
        default_factory=dict, description="Run-defining spec field (RUN_DEFINING_FIELDS) -> field_hash of its value."
    )

    def describe(self) -> str:
        """``'team-a/papillon' (uid 1f2e...)`` or ``'papillon'``."""
        name = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{name!r}" + (f" (uid {self.uid})" if self.uid else "")

    def differing_fields(self, other: JobIdentity) -> list[str]:
        """Run-defining fields whose hashes differ (one side's missing field counts), in RUN_DEFINING_FIELDS order."""
        extra = sorted((set(self.definition) | set(other.definition)) - set(RUN_DEFINING_FIELDS))
        return [n for n in (*RUN_DEFINING_FIELDS, *extra) if self.definition.get(n) != other.definition.get(n)]


class RunOwner(BaseModel):
    """The job a trainer runs for, and how a refusal names its run directory and the way out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: JobIdentity
    where: str = Field(..., description="The run directory as its user knows it: claim and folder, or a local path.")
    fix: str = Field(..., description="What to do instead of resuming another run, in the runner's terms.")
