"""Overlapped rollouts (``grpo.overlap_rollouts``): step k+1 samples while step k trains.

The rollouts of step k+1 start on the main rank, in one background thread, right
before step k's update, on the adapter vLLM serves then: policy-v(k-1). The update
stays on the main thread (torch and DDP collectives are not shared with it). The
batch is one step off-policy; the loss's truncated importance weight
min(π_θk / π_sampler, cap), with the sampler's own logprobs, corrects for it
exactly as for vLLM's numeric drift (TRL's truncated IS, decoupled PPO with θk
as the proximal policy).

What stays as in sequential mode, and why it holds:

* seeds: a step's examples come from the same sampler stream and its rollouts from
  the same per-step seed whichever mode runs it; only the sampling adapter differs;
* checkpoints: a batch drawn but not yet trained is not part of the step; the
  checkpoint saves the sampler state from before its draw (``Drawn.sampler_before``)
  and a resumed run samples it again, on the same adapter (:func:`sampling_version`);
* one rollout batch at a time: validation and the next draw wait for the thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def sampling_version(step: int, overlap: bool) -> int:
    """The adapter step whose weights sample step ``step``'s rollouts (0: the base model).

    Sequential: the previous step's adapter. Overlapped: the one before it, since
    step k+1 samples while step k trains (steps 1 and 2 both sample the base model).
    """
    return max(step - (2 if overlap else 1), 0)


def resume_versions(step: int, overlap: bool) -> list[int]:
    """Adapter steps to serve, in publish order, when a run resumes after ``step``.

    The last one is the current adapter; an overlapped run also needs the one its
    next rollouts sample on (published first, so it stays loaded as the previous).
    """
    first = sampling_version(step + 1, overlap)
    return [v for v in dict.fromkeys([first, step]) if v > 0] or [0]


def publish_unloads(in_flight: int, max_loras: int, keep_previous: bool) -> bool:
    """Whether publishing the next adapter would unload ``in_flight`` (the adapter a running batch samples).

    The base model (0) is never unloaded; otherwise the sync keeps the previous
    version only with ``keep_previous`` and room for two adapters.
    """
    return in_flight > 0 and (max_loras < 2 or not keep_previous)


@dataclass(frozen=True)
class Drawn:
    """A step's examples, taken from the sampler on the main thread before its rollouts start."""

    step: int
    indices: list[int]
    sampler_before: dict[str, int]  # the sampler state a checkpoint saves while this batch is untrained
    version: int  # adapter step sampling it (0: base model)
    adapter: str  # its vLLM model name


@dataclass
class _InFlight(Generic[T]):
    drawn: Drawn
    future: Future[T]
    started: float


class Prefetcher(Generic[T]):
    """At most one rollout batch running in a background thread; its result is taken once."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._in_flight: _InFlight[T] | None = None

    @property
    def pending(self) -> Drawn | None:
        return self._in_flight.drawn if self._in_flight is not None else None

    def start(self, drawn: Drawn, work: Callable[[], T]) -> None:
        if self._in_flight is not None:
            raise RuntimeError(f"step {self._in_flight.drawn.step}'s rollouts are still pending")
        self._in_flight = _InFlight(drawn, self._pool.submit(work), time.monotonic())
        log.info("prefetching rollouts", extra={"step": drawn.step, "adapter": drawn.adapter})

    def wait(self) -> float:
        """Block until the pending batch has finished (result kept); returns the seconds waited."""
        if self._in_flight is None:
            return 0.0
        started = time.monotonic()
        self._in_flight.future.exception()
        return time.monotonic() - started

    def take(self, step: int) -> tuple[T, float]:
        """The pending batch's result (raising what it raised) and the seconds spent waiting for it."""
        if self._in_flight is None or self._in_flight.drawn.step != step:
            raise RuntimeError(f"no pending rollouts for step {step} (pending: {self.pending})")
        waited = self.wait()
        in_flight, self._in_flight = self._in_flight, None
        return in_flight.future.result(), waited

    def discard(self) -> Drawn | None:
        """Drop the pending batch (stop, failure): wait for its thread, ignore its outcome."""
        if self._in_flight is None:
            return None
        in_flight, self._in_flight = self._in_flight, None
        error: Any = in_flight.future.exception()
        if error is not None:
            log.warning("discarded prefetched rollouts failed", extra={"step": in_flight.drawn.step, "error": str(error)[:300]})
        return in_flight.drawn

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
