"""The board the training loop reports progress to.

It keeps the :class:`~grpo_trainer.contract.progress.Progress` document, rewrites
``<run_dir>/progress.json`` atomically on every change and tells its observers
(the Prometheus metrics), so the document and the metrics cannot disagree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from grpo_trainer.contract.progress import (
    MAX_WARNINGS,
    PHASES,
    PROGRESS_FILE,
    TIMED_PHASES,
    ErrorReason,
    Phase,
    Progress,
    RunResult,
    StepDiagnostics,
    TimedPhase,
)
from grpo_trainer.run.atomic import write_text_atomic
from grpo_trainer.run.secrets import Redactor

log = logging.getLogger(__name__)

_ETA_WINDOW = 10  # steps averaged for the ETA


def _now() -> datetime:
    return datetime.now(timezone.utc)


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

    def __init__(
        self,
        run_dir: str | Path,
        job: str,
        max_steps: int,
        *,
        initial: Progress | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        self._redact = redact or Redactor.from_env()  # an error is published: /progress, termination message
        self._lock = threading.RLock()
        if initial is not None:
            self._doc = initial.model_copy(deep=True)
            self._doc.max_steps = max_steps
            self._doc.phase, self._doc.finished, self._doc.error = "starting", False, None
            self._doc.error_reason = None
            self._doc.loaded_adapters = []  # the earlier attempt's: this one has not looked yet
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
        diagnostics: StepDiagnostics | None = None,
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
            doc.diagnostics = diagnostics
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

    def code(self, summary: str | None) -> None:
        """The job's code as imported (usercode.install.code_summary)."""
        with self._lock:
            self._doc.code = summary
            self._publish()

    def trained_predictors(self, names: list[str]) -> None:
        """The predictors the policy drives and trains (grpo_trainer.dspy.policy_binding)."""
        with self._lock:
            self._doc.trained_predictors = list(names)
            self._publish()

    def loaded_adapters(self, names: list[str]) -> None:
        """The run's versions vLLM serves now (VLLMAdapterSync.loaded); published only when they change."""
        with self._lock:
            if self._doc.loaded_adapters != names:
                self._doc.loaded_adapters = list(names)
                self._publish()

    def record_result(self, result: RunResult) -> None:
        with self._lock:
            self._doc.result = result
            self._publish()

    def checkpoint_saved(self, step: int) -> None:
        with self._lock:
            self._doc.checkpoint_step, self._doc.checkpoint_error = step, None
            self._publish()

    def checkpoint_failed(self, step: int, error: str) -> None:
        """The checkpoint of ``step`` could not be written; the previous one (checkpoint_step) stands."""
        with self._lock:
            self._doc.checkpoint_failures += 1
            self._doc.checkpoint_error = self._redact(f"step {step}: {error}")
            self._publish()

    def record_served_check(self, check: dict[str, Any]) -> None:
        with self._lock:
            self._doc.served_check = check
            self._publish()

    def warn(self, message: str) -> None:
        """Something went wrong without failing the run: logged, and kept (the newest MAX_WARNINGS) in the document."""
        message = self._redact(message)
        log.warning(message)
        with self._lock:
            self._doc.warnings = [*self._doc.warnings, message][-MAX_WARNINGS:]
            self._publish()

    def finish(self) -> None:
        with self._lock:
            self._doc.phase, self._doc.finished, self._doc.eta_seconds = "done", True, 0.0
            self._publish()

    def fail(self, error: str, *, reason: ErrorReason | None = None) -> None:
        """The run failed; ``reason``: the job itself is wrong (no retry helps)."""
        with self._lock:
            self._doc.phase, self._doc.finished, self._doc.error = "failed", True, self._redact(error)
            self._doc.error_reason = reason
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
