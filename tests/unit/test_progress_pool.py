"""The trainers' /progress read from a pool of its own (operator/grpo_operator/controller/progress_pool.py).

Real HTTP servers on loopback stand in for trainers: a well-behaved one and one that trickles
its reply a byte at a time (the hostile trainer of issue #19, item 5)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import pytest

from grpo_operator.controller.progress_poll import fetch_progress
from grpo_operator.controller.progress_pool import ProgressPoller

pytestmark = pytest.mark.timeout(60)


class _Trainer(BaseHTTPRequestHandler):
    """/progress: the document of ``step``; /trickle: a valid document, one byte every 0.1 s."""

    step = 1
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = json.dumps({"step": type(self).step, "max_steps": 10}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.path == "/trickle":
            for byte in body + b" " * 400:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def trainer() -> Iterator[tuple[str, type[_Trainer]]]:
    handler = type("Trainer", (_Trainer,), {"step": 1, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def wait_for(pred: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("condition not met")


def test_a_reconcile_never_waits_for_a_trickling_trainer_and_healthy_ones_are_read_beside_it(trainer):
    base, handler = trainer
    news: list[str] = []
    poller: ProgressPoller[str] = ProgressPoller(workers=2, interval=0.2, timeout=1.0)
    poller.on_news = news.append
    try:
        for _ in range(5):  # reconciles of the hostile job: each returns at once
            started = time.monotonic()
            assert poller.latest("hostile", f"{base}/trickle") == {}
            assert time.monotonic() - started < 0.1
        assert poller.in_flight() == 1  # one poll per job at a time, however often its job is reconciled
        assert poller.latest("healthy", f"{base}/progress") == {}  # asked for; read in the background
        wait_for(lambda: "healthy" in news)  # ... and its job handed back to the work queue
        fields = poller.latest("healthy", f"{base}/progress")
        assert fields["step"] == 1 and fields["progressPercentage"] == 10
        handler.step = 2  # unchanged progress is no news; a new step is
        wait_for(lambda: poller.latest("healthy", f"{base}/progress").get("step") == 2)
        assert news.count("healthy") == 2 and "hostile" not in news
    finally:
        poller.shutdown()


def test_a_trainer_that_held_a_thread_for_a_whole_timeout_is_polled_less_often(trainer):
    base, handler = trainer
    poller: ProgressPoller[str] = ProgressPoller(workers=1, interval=0.2, timeout=0.3)
    try:
        poller.latest("slow", f"{base}/trickle")
        wait_for(lambda: handler.requests and poller.in_flight() == 0)
        deadline = time.monotonic() + 0.3  # the normal interval (0.2 s) would poll it again by then
        while time.monotonic() < deadline:
            poller.latest("slow", f"{base}/trickle")
            time.sleep(0.02)
        assert handler.requests == ["/trickle"]  # backed off to 2 x the interval, and the poll took 0.6 s
    finally:
        poller.shutdown()


def test_suspects_are_read_on_threads_of_their_own_and_never_hold_up_a_trainer_that_answers(trainer):
    base, _ = trainer
    news: list[str] = []
    poller: ProgressPoller[str] = ProgressPoller(workers=1, interval=0.1, timeout=0.3, suspect_workers=1)
    poller.on_news = news.append
    try:
        poller.latest("hostile", f"{base}/trickle")  # read on the one shared thread: found slow (0.6 s)
        wait_for(lambda: poller.in_flight() == 0)
        wait_for(lambda: poller.latest("hostile", f"{base}/trickle") == {} and poller.in_flight() == 1)  # a suspect
        started = time.monotonic()
        poller.latest("healthy", f"{base}/progress")
        wait_for(lambda: "healthy" in news)
        assert time.monotonic() - started < 0.3  # not behind the suspect's 0.6 s of trickling
    finally:
        poller.shutdown()


def test_a_poll_stuck_in_its_thread_turns_the_pool_unhealthy_an_idle_pool_never_is():
    """A thread that never returns (a stand-in fetch: a read past every bound cannot happen for real)."""
    stuck = threading.Event()

    def fetch(url: str, timeout: float) -> Optional[dict[str, Any]]:
        stuck.wait(30)
        return None

    poller: ProgressPoller[str] = ProgressPoller(workers=1, interval=1, timeout=1, fetch=fetch)
    try:
        assert poller.stalled(limit=60, now=time.monotonic() + 3600) is None  # idle
        poller.latest("job", "http://127.0.0.1:9/progress")
        poller.latest("other", "http://127.0.0.1:9/progress")  # queued behind it
        wait_for(lambda: poller.in_flight() == 2)
        assert poller.stalled(limit=60) is None
        reason = poller.stalled(limit=60, now=time.monotonic() + 61)
        assert reason is not None and "progress pool: job in hand" in reason
    finally:
        stuck.set()
        poller.shutdown()


def test_the_trainers_final_report_is_not_overwritten_by_a_poll_begun_before_it(trainer):
    base, handler = trainer
    gate = threading.Event()

    def fetch(url: str, timeout: float) -> Optional[dict[str, Any]]:
        gate.wait(10)
        return fetch_progress(url, timeout)

    poller: ProgressPoller[str] = ProgressPoller(workers=1, interval=0.1, timeout=1, fetch=fetch)
    try:
        poller.latest("job", f"{base}/progress")  # reads step 1 ... after the trainer has ended
        poller.set_final("job", {"step": 10})
        gate.set()
        wait_for(lambda: handler.requests and poller.in_flight() == 0)
        assert poller.latest("job", None) == {"step": 10}
    finally:
        poller.shutdown()
