"""Stand-ins for the trainer's ``/progress`` where no trainer can run: unit tests, and KWOK pods (no image
runs on a fake node).

:data:`REPLIES` are what a trainer running the user's code may send: its real document
(``healthy``), or hostile replies (huge, trickling, silent, not JSON, overflowing numbers,
nested past any parser). :class:`FakeTrainers` is the ``/progress`` of every trainer pod on
the KWOK nodes at once: KWOK gives pods loopback IPs (127.100.0.0/16), so one server listening
on every local address at the operator's trainer port gets each request on the IP of the pod
it was meant for, and answers as that pod's job is told to.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

Reply = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]

TRICKLE_BYTE_SECONDS = 0.2
SILENT_SECONDS = 60.0


def _start(h: BaseHTTPRequestHandler, length: Optional[int] = None) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    if length is not None:
        h.send_header("Content-Length", str(length))
    h.end_headers()


def healthy(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode()
    _start(h, len(body))
    h.wfile.write(body)


def huge(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    """2 MiB of a valid document, its size declared."""
    body = json.dumps({**doc, "pad": "x" * (2 << 20)}).encode()
    _start(h, len(body))
    h.wfile.write(body)


def huge_chunked(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    """2 MiB with no Content-Length: the cap must hold while reading."""
    _start(h)
    h.wfile.write(b'{"pad": "' + b"x" * (2 << 20) + b'"}')


def trickle(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    """A valid document, a byte every TRICKLE_BYTE_SECONDS: each read is on time, the whole never is."""
    _start(h)
    for byte in json.dumps(doc).encode() + b" " * 400:
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(TRICKLE_BYTE_SECONDS)


def silent(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    """Accepts the request and says nothing."""
    time.sleep(SILENT_SECONDS)


def garbage(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    body = b"<html>this is not a progress document</html>"
    _start(h, len(body))
    h.wfile.write(body)


def overflowing(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    """Numbers no status field can hold (1e999 parses as infinity) and a 5,000-character name."""
    body = (
        b'{"step": 1e999, "best_step": 1000000000000000000000000000000, "val_score": -1e999, '
        b'"reward_mean": NaN, "adapter_version": "' + b"v" * 5000 + b'"}'
    )
    _start(h, len(body))
    h.wfile.write(body)


def deep(h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
    """Nesting past any recursive parser."""
    body = b"[" * 100_000 + b"]" * 100_000
    _start(h, len(body))
    h.wfile.write(body)


REPLIES: dict[str, Reply] = {
    "healthy": healthy,
    "huge": huge,
    "huge-chunked": huge_chunked,
    "trickle": trickle,
    "silent": silent,
    "garbage": garbage,
    "overflowing": overflowing,
    "deep": deep,
}
HOSTILE = tuple(kind for kind in REPLIES if kind != "healthy")


def _quiet(handler: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    handler.log_message = lambda self, *args: None  # type: ignore[method-assign]
    return handler


class ReplyByPath(BaseHTTPRequestHandler):
    """``GET /<kind>``: that reply of :data:`REPLIES`, on a document of step 1 (for unit tests)."""

    def do_GET(self) -> None:
        reply = REPLIES.get(self.path.strip("/"))
        if reply is None:
            self.send_error(404)
            return
        reply(self, {"step": 1, "max_steps": 10})


_quiet(ReplyByPath)


class FakeTrainers:
    """The /progress of every KWOK trainer pod: one server on every local address at ``port``.

    ``job_of_ip`` names the job of the pod with that IP (None: not a trainer pod of the test's).
    Each job is answered with ``reply[job]`` (default ``healthy``) on ``documents[job]``;
    ``requests`` counts the requests per job.
    """

    def __init__(self, port: int, job_of_ip: Callable[[str], Optional[str]]) -> None:
        self.port = port
        self.reply: dict[str, str] = {}
        self.documents: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self._job_of_ip = job_of_ip
        self._jobs: dict[str, str] = {}  # pod IP -> job, as found
        self._lock = threading.Lock()
        trainers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                job = trainers.job_of(self.connection.getsockname()[0])
                if job is None or self.path != "/progress":
                    self.send_error(404)
                    return
                with trainers._lock:
                    trainers.requests[job] += 1
                    kind = trainers.reply.get(job, "healthy")
                    doc = dict(trainers.documents.get(job) or {"job": job})
                with contextlib.suppress(OSError):  # the operator gave up on a hostile reply: it hung up
                    REPLIES[kind](self, doc)

        self._server = ThreadingHTTPServer(("0.0.0.0", port), _quiet(Handler))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-trainers").start()

    def job_of(self, ip: str) -> Optional[str]:
        with self._lock:
            job = self._jobs.get(ip)
        if job is None:
            job = self._job_of_ip(ip)
            if job is not None:
                with self._lock:
                    self._jobs[ip] = job
        return job

    def set(self, name: str, reply: str = "healthy", **doc: Any) -> None:
        """Answer job ``name``'s trainer with ``reply``; ``doc``: fields of its progress document (step, ...)."""
        with self._lock:
            self.reply[name] = reply
            self.documents[name] = {"job": name, **self.documents.get(name, {}), **doc}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
