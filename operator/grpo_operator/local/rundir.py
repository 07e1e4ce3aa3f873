"""The run directory: the local stand-in for the job's volume (config, adapters, checkpoints, logs, progress).

One runner at a time holds its lock; a rerun on the same directory resumes from
the trainer's newest complete checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional, TextIO

from pydantic import ValidationError

from grpo_operator.local.plan import CONFIG_FILE, InvalidInput, Plan
from grpo_trainer.contract.config import TrainerConfig
from grpo_trainer.contract.progress import PROGRESS_FILE, Progress
from grpo_trainer.run.atomic import write_bytes_atomic, write_text_atomic
from grpo_trainer.run.checkpoint_manifest import CHECKPOINTS_DIR, newest_verified
from grpo_trainer.run.ownership import ForeignRunError, check_owner

log = logging.getLogger(__name__)

LOGS_DIR = "logs"
LOCK_FILE = ".grpo-local.lock"
LOG_TAIL_LINES = 40


def _looks_like_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / PROGRESS_FILE).is_file()


def lock_run_dir(run_dir: Path, fresh: bool) -> TextIO:
    """Create (or with ``fresh``, empty) the run directory and hold its lock for the run."""
    if fresh and run_dir.exists() and any(run_dir.iterdir()) and not _looks_like_run_dir(run_dir):
        raise InvalidInput(
            f"--fresh would delete {run_dir}, which is not a run directory (no {CONFIG_FILE}); remove it yourself"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / LOCK_FILE, "a+")  # not "w": truncating would erase a running runner's pid
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InvalidInput(f"{run_dir} is in use by another grpo-local; wait for it or pass --run-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")  # whom `grpo stop --local` signals
    lock.flush()
    if fresh:
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return lock


def latest_checkpoint(run_dir: Path) -> Optional[int]:
    """The step the trainer will resume from: its newest complete, verified checkpoint."""
    return newest_verified(run_dir / CHECKPOINTS_DIR)


def _config_changes(old_text: str, new: TrainerConfig) -> list[str]:
    """Top-level config sections that differ from the run directory's previous config (resume with care)."""
    try:
        old = json.loads(old_text)
    except ValueError:
        return []
    current = json.loads(new.to_json())
    ignored = {"port", "vllm", "owner"}  # ports change between runs legitimately; the owner is checked on its own
    changed = [k for k in current if k not in ignored and old.get(k) != current[k]]
    if changed == ["grpo"]:  # --steps alone is fine
        old_grpo = {k: v for k, v in old.get("grpo", {}).items() if k != "num_train_steps"}
        new_grpo = {k: v for k, v in current["grpo"].items() if k != "num_train_steps"}
        if old_grpo == new_grpo:
            return []
    return changed


def check_run_dir_owner(plan: Plan) -> None:
    """The trainer's own check (grpo_trainer.run.ownership), before the runner writes anything into the
    directory: another job's run directory (or this job's with other run-defining fields) is refused."""
    if plan.config.owner is None:
        return
    try:
        check_owner(plan.run_dir, plan.config.owner)
    except ForeignRunError as exc:
        raise InvalidInput(f"{exc.reason}: {exc}") from None


def write_config(plan: Plan) -> None:
    """The trainer's config and the files it reads (what a pod gets from ConfigMaps), and logs/: the runner's
    first writes into the run directory (after check_run_dir_owner)."""
    path = plan.run_dir / CONFIG_FILE
    if path.is_file():
        changed = _config_changes(path.read_text(encoding="utf-8"), plan.config)
        if changed:
            log.warning(
                "the job differs from the one this run directory was started with (%s); resuming anyway "
                "(use --fresh to start over)",
                ", ".join(changed),
            )
    write_text_atomic(path, plan.config.to_json() + "\n")
    (plan.run_dir / LOGS_DIR).mkdir(exist_ok=True)
    for file, data in plan.job_files.items():  # what pods read from ConfigMaps, where the config points
        file.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(file, data)


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def read_progress(run_dir: Path) -> Optional[Progress]:
    """The trainer's progress document; None when absent or unreadable (the runner must not die of it)."""
    try:
        return Progress.read(run_dir)
    except (OSError, ValueError, ValidationError) as exc:
        log.debug("unreadable %s: %s", run_dir / PROGRESS_FILE, exc)
        return None
