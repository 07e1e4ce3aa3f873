"""The run's progress document and the board the training loop reports to.

One JSON document (``Progress``) says where the run is; it is rewritten atomically
to ``<run_dir>/progress.json`` on every change (the local runner reads the file)
and served at ``/progress`` (the operator polls it: it has no write access to the
trainer). Observers (the Prometheus metrics) are told of every change, so the
document and the metrics cannot disagree.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field

from .atomic import write_text_atomic

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"

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
PHASES: tuple[str, ...] = get_args(Phase)
TIMED_PHASES: tuple[str, ...] = get_args(TimedPhase)
_ETA_WINDOW = 10  # steps averaged for the ETA


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseTimings(_Doc):
    """Seconds each phase took in the most recent step that ran it (None: not run yet)."""

    # "validate" would shadow BaseModel.validate: the attribute is validate_, the JSON key "validate"
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    rollout: Optional[float] = Field(None, description="Generation and scoring of the step's rollouts (wall time).")
    reward: Optional[float] = Field(None, description="Metric calls of the rollouts, summed (they run inside rollout, concurrently).")
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
    step: Optional[float] = Field(None, description="Wall time from the end of the previous step to the end of this one.")


class Progress(_Doc):
    """Where a run is. JSON keys are snake_case and flat (what grpo_operator.progress reads); score maps are keyed by step."""

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
    started_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    eta_seconds: Optional[float] = None
    finished: bool = False
    error: Optional[str] = None
    served_check: Optional[dict[str, Any]] = Field(
        None, description="End-of-run proof that vLLM serves the adapter on the volume (trainer/served_check.py)."
    )

    @classmethod
    def read(cls, run_dir: str | Path) -> Progress | None:
        """The document a trainer last wrote in ``run_dir``; None before the first write."""
        path = Path(run_dir) / PROGRESS_FILE
        return cls.model_validate_json(path.read_text(encoding="utf-8")) if path.is_file() else None


# The scalar fields of a finished run: what fits a pod's termination message (Kubernetes keeps 4 KiB).
FINAL_FIELDS = frozenset(
    {
        "job", "phase", "step", "max_steps", "reward_mean", "reward_std", "baseline_val_score", "val_score",
        "best_val_score", "best_step", "adapter_version", "best_adapter_version", "finished", "error", "updated_at",
    }
)  # fmt: skip
TERMINATION_MESSAGE_BYTES = 4096


def termination_message(progress: Progress) -> str:
    """The run's last word, for the pod's termination message (the operator reads it from the pod status).

    The operator polls /progress every few seconds and can miss what happens between
    its last poll and the exit -- the final validation, the last step, the error that
    ended the run. Kubernetes keeps this text in the terminated container's status.
    """
    doc = progress.model_dump(mode="json", include=set(FINAL_FIELDS))
    text = json.dumps(doc, separators=(",", ":"))
    excess = len(text.encode()) - TERMINATION_MESSAGE_BYTES
    if excess > 0 and doc.get("error"):
        doc["error"] = doc["error"][: max(0, len(doc["error"]) - excess - 3)] + "..."
        text = json.dumps(doc, separators=(",", ":"))
    return text


class ProgressObserver(Protocol):
    def on_progress(self, progress: Progress) -> None:
        """Called with a copy of the document after every change."""

    def on_phase_seconds(self, phase: str, seconds: float) -> None:
        """Called once per timed phase run."""


class ProgressBoard:
    """The single place the loop reports to; thread-safe (the HTTP server reads it concurrently).

    ``initial``: the document to continue from on resume (the loop keeps it in the
    checkpoint's history), so score history, totals and start time survive restarts.
    """

    def __init__(self, run_dir: str | Path, job: str, max_steps: int, *, initial: Progress | None = None) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        self._lock = threading.RLock()
        if initial is not None:
            self._doc = initial.model_copy(deep=True)
            self._doc.max_steps = max_steps
            self._doc.phase, self._doc.finished, self._doc.error = "starting", False, None
        else:
            self._doc = Progress(job=job, max_steps=max_steps)
        self._observers: list[ProgressObserver] = []
        self._step_durations: deque[float] = deque(maxlen=_ETA_WINDOW)
        self._last_step_end: float | None = None
        self._publish()

    # -- reading ---------------------------------------------------------------------

    def snapshot(self) -> Progress:
        with self._lock:
            return self._doc.model_copy(deep=True)

    def subscribe(self, observer: ProgressObserver) -> None:
        with self._lock:
            self._observers.append(observer)
            observer.on_progress(self._doc.model_copy(deep=True))

    # -- reporting ---------------------------------------------------------------------

    def set_phase(self, phase: Phase) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
        with self._lock:
            if phase == "rollout" and self._last_step_end is None:
                self._last_step_end = time.monotonic()  # the first step's clock starts at its first rollout
            self._doc.phase = phase
            self._publish()

    @contextmanager
    def timed(self, phase: TimedPhase, *, show: bool = True) -> Iterator[None]:
        """Time a block as ``phase``; if it is also a run phase (rollout, train, validate) the document shows it.

        ``show=False`` only times it: rollouts prefetched in the background while the
        main thread trains must not replace the phase the document shows.
        """
        if show and phase in PHASES:
            self.set_phase(phase)  # type: ignore[arg-type]
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record_timings(**{phase: time.perf_counter() - start})

    def record_timings(self, **seconds: float) -> None:
        """Record timings measured elsewhere, e.g. ``save=..., load=..., first_request=...`` from the adapter sync."""
        unknown = set(seconds) - set(TIMED_PHASES)
        if unknown:
            raise ValueError(f"unknown timed phases {sorted(unknown)}; one of {TIMED_PHASES}")
        with self._lock:
            for phase, value in seconds.items():
                setattr(self._doc.timings, "validate_" if phase == "validate" else phase, value)
            self._publish()
            for phase, value in seconds.items():
                for observer in self._observers:
                    observer.on_phase_seconds(phase, value)

    def step_done(
        self,
        step: int,
        *,
        reward_mean: float | None,
        reward_std: float | None,
        tokens_generated: int = 0,
        tokens_trained: int = 0,
        rollout_failures: Mapping[str, int] | None = None,
        skipped_groups: int = 0,
        train_score: float | None = None,
    ) -> None:
        """A step finished; counts are this step's (the board keeps run totals)."""
        now = time.monotonic()
        with self._lock:
            if self._last_step_end is not None:
                self._step_durations.append(now - self._last_step_end)
                self._doc.timings.step = now - self._last_step_end
                for observer in self._observers:
                    observer.on_phase_seconds("step", now - self._last_step_end)
            self._last_step_end = now
            doc = self._doc
            doc.step = step
            doc.reward_mean, doc.reward_std = reward_mean, reward_std
            if reward_mean is not None:
                doc.reward_means[step] = reward_mean
            doc.tokens_generated += tokens_generated
            doc.tokens_trained += tokens_trained
            for kind, count in (rollout_failures or {}).items():
                doc.rollout_failures[kind] = doc.rollout_failures.get(kind, 0) + count
            doc.skipped_groups += skipped_groups
            if train_score is not None:
                doc.train_scores[step] = train_score
            if self._step_durations:
                mean = sum(self._step_durations) / len(self._step_durations)
                doc.eta_seconds = round(mean * max(0, doc.max_steps - step), 3)
            self._publish()

    def validation(self, step: int, score: float, *, baseline: bool = False, train_score: float | None = None) -> bool:
        """Record a validation score; True when it is a new best (the loop then keeps that adapter)."""
        with self._lock:
            doc = self._doc
            doc.val_scores[step] = score
            doc.val_score = score
            if baseline:
                doc.baseline_val_score = score
            if train_score is not None:
                doc.train_scores[step] = train_score
            is_best = doc.best_val_score is None or score > doc.best_val_score
            if is_best:
                doc.best_val_score, doc.best_step = score, step
            self._publish()
            return is_best

    def adapter(self, step: int, name: str, *, best: bool = False) -> None:
        """The adapter rollouts now use; ``best``: it is also the best one."""
        with self._lock:
            self._doc.adapter_version, self._doc.adapter_step = name, step
            if best:
                self._doc.best_adapter_version = name
            self._publish()

    def best_adapter(self, name: str | None) -> None:
        """The best adapter's vLLM name (None: the base model scored best)."""
        with self._lock:
            self._doc.best_adapter_version = name
            self._publish()

    def record_served_check(self, check: dict[str, Any]) -> None:
        with self._lock:
            self._doc.served_check = check
            self._publish()

    def finish(self) -> None:
        with self._lock:
            self._doc.phase, self._doc.finished, self._doc.eta_seconds = "done", True, 0.0
            self._publish()

    def fail(self, error: str) -> None:
        with self._lock:
            self._doc.phase, self._doc.finished, self._doc.error = "failed", True, error
            self._publish()

    # -- publication --------------------------------------------------------------------

    def _publish(self) -> None:
        self._doc.updated_at = _now()
        try:
            write_text_atomic(self.path, self._doc.model_dump_json(indent=2) + "\n")
        except OSError as exc:  # a full or flaky volume must not stop training; HTTP still serves the document
            log.warning("could not write %s: %s", self.path, exc)
        copy = self._doc.model_copy(deep=True)
        for observer in self._observers:
            observer.on_progress(copy)
