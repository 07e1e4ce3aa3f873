"""The operator's work queue (operator/grpo_operator/controller/workqueue.py) and the resync that feeds it, without a cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from grpo_operator.controller.handlers import Resync
from grpo_operator.controller.workqueue import WorkQueue

pytestmark = pytest.mark.timeout(30)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


class Recorder:
    """A ``process`` that records calls; keys in ``gates`` wait for their event, keys in ``fail`` raise."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active: set[str] = set()
        self.max_active = 0
        self.overlap: list[str] = []  # keys seen processed by two workers at once
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    def gate(self, key: str) -> asyncio.Event:
        self.started[key] = asyncio.Event()
        self.gates[key] = asyncio.Event()
        return self.gates[key]

    async def __call__(self, key: str) -> None:
        if key in self.active:
            self.overlap.append(key)
        self.active.add(key)
        self.max_active = max(self.max_active, len(self.active))
        self.calls.append(key)
        try:
            if key in self.started:
                self.started[key].set()
            if key in self.gates:
                await self.gates[key].wait()
            await asyncio.sleep(0)
            if key in self.fail:
                raise RuntimeError(f"boom {key}")
        finally:
            self.active.discard(key)


def test_a_key_added_many_times_while_waiting_is_processed_once():
    async def test() -> None:
        rec = Recorder()
        queue: WorkQueue[str] = WorkQueue(rec, workers=4)
        for _ in range(5):
            queue.add("a")
            queue.add("b")
        assert len(queue) == 2
        queue.start()
        await queue.join()
        await queue.stop()
        assert sorted(rec.calls) == ["a", "b"]

    run(test)


def test_an_add_during_processing_runs_the_key_once_more_after_never_concurrently():
    async def test() -> None:
        rec = Recorder()
        release = rec.gate("a")
        queue: WorkQueue[str] = WorkQueue(rec, workers=4)
        queue.start()
        queue.add("a")
        await rec.started["a"].wait()
        for _ in range(3):  # three events while "a" is being processed: one more run, not three
            queue.add("a")
        await asyncio.sleep(0.01)  # idle workers had the chance to take "a" concurrently
        assert rec.calls == ["a"]
        del rec.gates["a"], rec.started["a"]
        release.set()
        await queue.join()
        await queue.stop()
        assert rec.calls == ["a", "a"]
        assert rec.overlap == []

    run(test)


def test_workers_bound_the_concurrency():
    async def test() -> None:
        rec = Recorder()
        releases = [rec.gate(str(i)) for i in range(10)]
        queue: WorkQueue[str] = WorkQueue(rec, workers=3)
        queue.start()
        for i in range(10):
            queue.add(str(i))
        await asyncio.sleep(0.01)
        assert rec.max_active == 3 and len(queue) == 7
        for release in releases:
            release.set()
        await queue.join()
        await queue.stop()
        assert sorted(rec.calls, key=int) == [str(i) for i in range(10)]
        assert rec.max_active == 3

    run(test)


def test_an_error_in_one_key_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture):
    async def test() -> None:
        rec = Recorder()
        rec.fail = {"bad"}
        queue: WorkQueue[str] = WorkQueue(rec, workers=1, name="jobs")
        queue.start()
        for key in ("bad", "good", "bad"):
            queue.add(key)  # the second "bad" is a duplicate of the waiting one
        await queue.join()
        queue.add("bad")  # a failed key can be added again
        queue.add("after")
        await queue.join()
        await queue.stop()
        assert rec.calls == ["bad", "good", "bad", "after"]

    with caplog.at_level(logging.ERROR, logger="grpo_operator.controller.workqueue"):
        run(test)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert all("jobs: processing bad failed" in r.getMessage() and r.exc_info for r in failures)


def test_background_keys_wait_for_urgent_ones_and_an_urgent_add_promotes_them():
    async def test() -> None:
        rec = Recorder()
        queue: WorkQueue[str] = WorkQueue(rec, workers=1)
        for key in ("r1", "r2", "r3"):
            queue.add(key, background=True)
        queue.add("event")
        queue.add("r3")  # an event for a job the resync queued: it goes first too
        queue.add("event", background=True)  # already waiting: no change
        queue.start()
        await queue.join()
        await queue.stop()
        assert rec.calls == ["event", "r3", "r1", "r2"]

    run(test)


def test_stop_cancels_the_workers_and_drops_waiting_keys():
    async def test() -> None:
        rec = Recorder()
        rec.gate("slow")
        queue: WorkQueue[str] = WorkQueue(rec, workers=1)
        queue.start()
        queue.add("slow")
        queue.add("waiting")
        await rec.started["slow"].wait()
        await queue.stop()
        assert not queue.running
        assert rec.calls == ["slow"] and rec.active == set()  # the processing was cancelled, not left hanging

    run(test)


def test_liveness_a_key_in_hand_too_long_is_a_stall_and_an_idle_queue_never_is():
    """What /healthz turns red on: a worker holding one key past the limit (a wedged reconcile); an idle
    operator, however long idle, stays healthy."""

    async def test() -> None:
        rec = Recorder()
        release = rec.gate("wedged")
        queue: WorkQueue[str] = WorkQueue(rec, workers=2, name="grpojobs")
        queue.start()
        later = time.monotonic() + 3600
        assert queue.stalled(limit=60, now=later) is None  # idle for an hour: healthy
        queue.add("wedged")
        await rec.started["wedged"].wait()
        assert queue.stalled(limit=60) is None  # in hand, not for long yet
        stalled = queue.stalled(limit=60, now=time.monotonic() + 61)
        assert stalled is not None and "work queue grpojobs: wedged in hand for 61 s" in stalled
        release.set()
        await queue.join()
        assert queue.stalled(limit=60, now=later) is None  # done: idle again
        await queue.stop()

    run(test)


def test_liveness_keys_waiting_that_no_worker_takes_are_a_stall_a_busy_queue_is_not():
    async def test() -> None:
        rec = Recorder()
        queue: WorkQueue[str] = WorkQueue(rec, workers=1, name="grpojobs")
        queue.add("a")  # no worker started: nobody takes it (as when every worker task has died)
        stalled = queue.stalled(limit=60, now=time.monotonic() + 61)
        assert stalled is not None and "1 waiting and none taken or finished" in stalled
        # a busy queue that keeps taking keys is not stalled, however long its backlog lasts
        releases = [rec.gate(k) for k in ("b", "c")]
        queue.start()
        queue.add("b")
        queue.add("c")
        await rec.started["b"].wait()
        assert queue.stalled(limit=60) is None and len(queue) == 1
        for release in releases:
            release.set()
        await queue.join()
        await queue.stop()

    run(test)


def test_zero_workers_is_refused():
    with pytest.raises(ValueError):
        WorkQueue(lambda key: asyncio.sleep(0), workers=0)


class FakeReconciler:
    def __init__(self, recent: set[tuple[str, str]]) -> None:
        self.recent = recent

    def reconciled_within(self, key: tuple[str, str], seconds: float) -> bool:
        return key in self.recent and seconds > 0


def test_resync_queues_the_jobs_not_reconciled_lately_behind_events():
    async def test() -> None:
        seen: list[Any] = []

        async def process(key: tuple[str, str]) -> None:
            seen.append(key)

        queue: WorkQueue[tuple[str, str]] = WorkQueue(process, workers=1)
        resync = Resync(FakeReconciler({("ns", "fresh")}), queue, interval=10)  # type: ignore[arg-type]
        assert resync.once([("ns", "old"), ("ns", "fresh")], skip_within=5) == 1
        queue.add(("ns", "event"))
        queue.start()
        await queue.join()
        await queue.stop()
        assert seen == [("ns", "event"), ("ns", "old")]

    run(test)
