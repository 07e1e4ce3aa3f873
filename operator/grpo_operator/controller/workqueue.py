"""A deduplicated asyncio work queue of keys, drained by a fixed number of workers.

Why: a Kopf handler that reconciles in place holds one of Kopf's few handler
threads for the whole reconcile, and every pod event of a job ran its own
reconcile. With hundreds of jobs starting at once the events queued behind those
threads for minutes. Handlers now only :meth:`WorkQueue.add` the job's key; the
workers reconcile each key once for any number of events that arrived meanwhile.

The rules (those of client-go's workqueue, without rate limiting):

* a key waiting in the queue is not added twice;
* a key being processed when it is added again is processed once more after,
  by one worker: a key is never processed by two workers at the same time;
* an exception from one key is logged and the worker goes on with the next
  (the caller's periodic resync retries the key);
* :meth:`stop` cancels the workers; keys still waiting are dropped;
* :meth:`stalled` says when the workers are wedged (liveness.py): a key in hand
  too long, or keys waiting while none is taken.

Two lanes: keys added with ``background=True`` (the periodic resync) are taken
only when no other key waits, so an event about a new or changed job never
waits behind a resync of every job. Adding a waiting background key normally
moves it to the front lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Optional, TypeVar

from grpo_operator.controller.liveness import stall

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to process, each by at most one worker at a time; ``process`` is awaited by ``workers`` tasks.

    Not thread-safe: call :meth:`add` from the event loop's thread (Kopf's async handlers do).
    """

    def __init__(self, process: Callable[[K], Awaitable[object]], workers: int, name: str = "workqueue") -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._process = process
        self._workers = workers
        self.name = name
        # key → urgent?, for every key added and not yet taken by a worker: in a lane, or
        # (while it is being processed) due to run once more afterwards
        self._waiting: dict[K, bool] = {}
        self._lanes: dict[bool, deque[K]] = {True: deque(), False: deque()}
        self._available = asyncio.Semaphore(0)  # counts the keys in the lanes
        self._processing: dict[K, float] = {}  # key -> monotonic time a worker took it
        self._last_progress = time.monotonic()  # a key last taken or finished
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        """Keys waiting in the lanes (not those being processed)."""
        return len(self._lanes[True]) + len(self._lanes[False])

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    @property
    def processing(self) -> int:
        """Keys in a worker's hands now."""
        return len(self._processing)

    def stalled(self, limit: float, now: Optional[float] = None) -> Optional[str]:
        """Why the workers count as wedged (a key in hand over ``limit`` s, or keys waiting and none
        taken for that long), or None: an idle queue never is."""
        now = time.monotonic() if now is None else now
        return stall(f"work queue {self.name}", self._processing, len(self), self._last_progress, now, limit)

    def start(self) -> None:
        """Start the workers (in the running event loop); a second call does nothing."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"{self.name}-{i}") for i in range(self._workers)]

    def add(self, key: K, background: bool = False) -> None:
        """Ask for ``key`` to be processed (again). Cheap and never blocks."""
        urgent = not background
        queued = self._waiting.get(key)
        if queued is not None:  # already waiting, or already due to re-run after the current processing
            if urgent and not queued:
                self._waiting[key] = True
                if key not in self._processing:
                    self._lanes[False].remove(key)
                    self._lanes[True].append(key)
            return
        self._waiting[key] = urgent
        self._idle.clear()
        if key not in self._processing:  # else the worker processing it puts it back when done
            self._put(key, urgent)

    async def join(self) -> None:
        """Wait until no key is waiting or being processed."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Cancel the workers and wait for them to end; keys still waiting are dropped."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("work queue %s stopped; %d keys dropped", self.name, len(self), extra={"queue": self.name})

    def _put(self, key: K, urgent: bool) -> None:
        self._lanes[urgent].append(key)
        self._available.release()

    async def _take(self) -> K:
        await self._available.acquire()
        key = (self._lanes[True] or self._lanes[False]).popleft()
        del self._waiting[key]
        self._processing[key] = self._last_progress = time.monotonic()
        return key

    async def _work(self) -> None:
        while True:
            key = await self._take()
            try:
                await self._process(key)
            except Exception:
                log.exception("%s: processing %s failed", self.name, key, extra={"queue": self.name, "key": key})
            finally:
                self._processing.pop(key, None)
                self._last_progress = time.monotonic()
                again = self._waiting.get(key)
                if again is not None:  # added while we were at it: once more, with what changed since
                    self._put(key, again)
                elif not self._processing and not self._waiting:
                    self._idle.set()
