"""The trainers' ``/progress``, read from a bounded pool of threads of its own, never by a reconcile.

A trainer runs the user's code, so its reply may be slow on purpose: a reply that
trickles in is cut only after twice the timeout (progress_poll.py). Read on the
reconcile workers, a few such trainers held every worker and froze every
tenant's jobs. Here a reconcile only asks for a poll and uses the last progress
known; the poll runs on one of ``workers`` threads, at most one at a time per
job, and when it brings news the job is handed to ``on_news`` (the work queue),
so the reconcile that writes it follows at once.

A trainer whose poll held a thread for a whole timeout or more (trickling,
silent, dropped by a network policy) is a suspect: it is polled less often, the
interval doubling up to :data:`MAX_BACKOFF_SECONDS`, and on threads of its own
(``suspect_workers``), so suspects can only hold each other up, never the
trainers that answer; one quick reply makes it a trainer like the others again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

from grpo_operator.controller.conditions import now_utc
from grpo_operator.controller.liveness import stall
from grpo_operator.controller.progress_poll import PROGRESS_DEADLINE_FACTOR, fetch_progress, progress_status

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Fetch = Callable[[str, float], Optional[dict[str, Any]]]

MAX_BACKOFF_SECONDS = 300.0


@dataclass
class _Job:
    fields: dict[str, Any] = field(default_factory=dict)  # the status fields last read
    due: float = 0.0  # monotonic time from which the next poll may start
    slow: int = 0  # polls in a row that held a thread for a whole timeout or more
    final: int = 0  # bumped by a final report: a poll started before it is stale


class ProgressPoller(Generic[K]):
    """Polls each job's trainer at most every ``interval`` s, ``workers`` polls at a time; thread-safe."""

    def __init__(
        self,
        workers: int,
        interval: float,
        timeout: float,
        fetch: Fetch = fetch_progress,
        name: str = "progress",
        suspect_workers: Optional[int] = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.name = name
        self.on_news: Callable[[K], None] = lambda key: None
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"grpo-{name}")
        suspects = suspect_workers if suspect_workers is not None else max(1, workers // 2)
        self._suspects = ThreadPoolExecutor(max_workers=suspects, thread_name_prefix=f"grpo-{name}-suspect")
        self._lock = threading.Lock()
        self._jobs: dict[K, _Job] = {}
        self._queued: dict[K, float] = {}  # polls submitted, not yet started: key -> when submitted
        self._polling: dict[K, float] = {}  # polls running: key -> when started
        self._last_progress = time.monotonic()
        # a poll cannot run longer than this (its reads are bounded): past it, its thread is stuck
        self._poll_bound = (PROGRESS_DEADLINE_FACTOR + 1) * timeout

    def latest(self, key: K, url: Optional[str]) -> dict[str, Any]:
        """The job's last known progress (status fields, {} if none); polls ``url`` in the background when due."""
        now = time.monotonic()
        with self._lock:
            job = self._jobs.setdefault(key, _Job())
            fields = dict(job.fields)
            start = url is not None and now >= job.due and key not in self._queued and key not in self._polling
            if start:
                self._queued[key] = now
                generation, pool = job.final, self._suspects if job.slow else self._pool
        if start:
            assert url is not None
            pool.submit(self._poll, key, url, generation)
        return fields

    def set_final(self, key: K, fields: dict[str, Any]) -> None:
        """The trainer's own last word (its termination message): kept over any poll still under way."""
        with self._lock:
            job = self._jobs.setdefault(key, _Job())
            job.fields, job.final = dict(fields), job.final + 1

    def forget(self, key: K) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def stalled(self, limit: float, now: Optional[float] = None) -> Optional[str]:
        """Why the pool counts as wedged (see liveness.py), or None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            polling, waiting, last = dict(self._polling), len(self._queued), self._last_progress
        return stall(f"{self.name} pool", polling, waiting, last, now, max(limit, self._poll_bound))

    def in_flight(self) -> int:
        with self._lock:
            return len(self._queued) + len(self._polling)

    def shutdown(self) -> None:
        for pool in (self._pool, self._suspects):
            pool.shutdown(wait=False, cancel_futures=True)

    def _poll(self, key: K, url: str, generation: int) -> None:
        started = time.monotonic()
        with self._lock:
            self._queued.pop(key, None)
            self._polling[key] = self._last_progress = started
        news = False
        try:
            doc = self._fetch(url, self.timeout)
            fields = progress_status(doc, now_utc()) if doc is not None else None
        except Exception:  # never lose the pool's bookkeeping to a bug in one reply's handling
            log.exception("progress of %s from %s: unexpected error", key, url)
            fields = None
        finally:
            done = time.monotonic()
            with self._lock:
                self._polling.pop(key, None)
                self._last_progress = done
                job = self._jobs.get(key)
                if job is not None:
                    job.slow = min(job.slow + 1, 16) if done - started >= self.timeout else 0
                    job.due = done + min(self.interval * 2**job.slow, max(MAX_BACKOFF_SECONDS, self.interval))
                    if fields is not None and job.final == generation:
                        news = _changed(job.fields, fields)
                        job.fields = fields
        if news:
            self.on_news(key)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` says more than ``old`` besides the time it was read (a reconcile writes only news)."""
    skip = "lastProgressTime"
    return {k: v for k, v in old.items() if k != skip} != {k: v for k, v in new.items() if k != skip} or not old
