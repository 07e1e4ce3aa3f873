"""The run directory's owner: checked before anything is loaded or written, recorded before training.

Two jobs must never share a run directory: the second would resume the first one's
checkpoints (or find it finished and report success without training), overwrite its
``best.json`` and ``result/``, and prune its adapters. The directory records the job
that started it (``job.json``, and ``job`` in every checkpoint's state.json, see
grpo_trainer.contract.identity); a job of another name, or of the same name with other
run-defining fields and a checkpoint to resume, is refused with :class:`ForeignRunError`
(the trainer exits ``INVALID_JOB`` with reason ``ForeignRunDirectory``; grpo-local says
so before it writes anything there). A directory with no record (new, or written before
records existed) belongs to whoever claims it first.

Standard library and the contract only: the local runner runs the same check.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from grpo_trainer.contract.identity import JobIdentity, RunOwner
from grpo_trainer.contract.progress import ErrorReason
from grpo_trainer.run.atomic import write_text_atomic
from grpo_trainer.run.checkpoint_manifest import CHECKPOINTS_DIR, STATE_FILE, complete_steps

log = logging.getLogger(__name__)

OWNER_FILE = "job.json"
FOREIGN_RUN: ErrorReason = "ForeignRunDirectory"


class ForeignRunError(Exception):
    """The run directory holds another job's run (or this job's with another definition)."""

    reason: ErrorReason = FOREIGN_RUN


def _read(path: Path, key: Optional[str] = None) -> Optional[JobIdentity]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if key is not None:
            doc = doc.get(key)
        return None if doc is None else JobIdentity.model_validate(doc)
    except (OSError, ValueError, AttributeError, ValidationError) as exc:
        log.warning("unreadable job record %s: %s", path, exc)
        return None


def recorded_owners(run_dir: Path) -> list[tuple[str, JobIdentity]]:
    """(where it is recorded, the job) for ``job.json`` and each complete checkpoint that names its job."""
    found: list[tuple[str, JobIdentity]] = []
    owner_file = run_dir / OWNER_FILE
    if owner_file.is_file() and (job := _read(owner_file)) is not None:
        found.append((OWNER_FILE, job))
    root = run_dir / CHECKPOINTS_DIR
    for step in complete_steps(root):
        state = root / f"step-{step}" / STATE_FILE
        if state.is_file() and (job := _read(state, "job")) is not None:
            found.append((f"{CHECKPOINTS_DIR}/step-{step}", job))
    return found


def check_owner(run_dir: Path, owner: RunOwner) -> None:
    """Raise ForeignRunError unless every record in ``run_dir`` is of ``owner.job``: its name, and, when there is a
    checkpoint to resume, its run-defining fields (a first attempt that failed before its first checkpoint left
    nothing trained: the job, fixed, starts there)."""
    me = owner.job
    resumable = bool(complete_steps(run_dir / CHECKPOINTS_DIR))
    for source, job in recorded_owners(run_dir):
        if job.name != me.name:
            raise ForeignRunError(
                f"{owner.where} holds the run of job {job.describe()} ({source}), not of this job {me.describe()}: "
                f"resuming it would train on that job's checkpoints and overwrite its adapters and result. {owner.fix}"
            )
        differing = job.differing_fields(me)
        if differing and resumable:
            fields = ", ".join(f"spec.{name}" for name in differing)
            raise ForeignRunError(
                f"{owner.where} holds a run of job {job.name!r} started with another {fields} ({source}); "
                f"resuming it would continue that run under this job's settings. {owner.fix}"
            )


def claim_run_dir(run_dir: Path, owner: RunOwner) -> None:
    """Check the directory is this job's (ForeignRunError otherwise), then record the job in ``job.json``."""
    check_owner(run_dir, owner)
    path = run_dir / OWNER_FILE
    previous = _read(path) if path.is_file() else None
    if previous == owner.job:
        return
    if previous is not None and previous.uid != owner.job.uid:
        log.info(
            "resuming the run of an earlier job of this name",
            extra={"job": owner.job.name, "earlier_uid": previous.uid, "uid": owner.job.uid},
        )
    write_text_atomic(path, owner.job.model_dump_json(indent=2) + "\n")
