"""A TCP proxy that delays every request: a slow API server, for fault-injection tests.

The operator talks to the API server through it (TLS passes through untouched,
so the server's certificate still verifies for 127.0.0.1). With a few hundred
milliseconds per request, creating a job's children takes seconds, and a test
can kill the operator between two of those creations. :meth:`DelayProxy.hold`
stops requests from reaching the server at all (an API server that hangs) until
:meth:`DelayProxy.release`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import yaml


class DelayProxy:
    """Forward 127.0.0.1:<port> to ``upstream``, holding each client→server chunk for ``delay`` seconds."""

    def __init__(self, upstream: str, delay: float) -> None:
        url = urlparse(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 443)
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self.delay, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.0, False), daemon=True).start()

    def hold(self) -> None:
        """From now on, keep what clients send from the server (requests hang) until :meth:`release`."""
        self._flowing.clear()

    def release(self) -> None:
        """Let held and new requests through."""
        self._flowing.set()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float, holdable: bool) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                if holdable:
                    self._flowing.wait()
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def kubeconfig(self, source: Path, target: Path) -> Path:
        """A copy of ``source`` whose cluster server is this proxy."""
        doc = yaml.safe_load(source.read_text())
        for cluster in doc["clusters"]:
            cluster["cluster"]["server"] = self.url
        target.write_text(yaml.safe_dump(doc))
        target.chmod(0o600)
        return target

    def close(self) -> None:
        self._closed.set()
        for s in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.close()


def upstream_of(kubeconfig: Path) -> str:
    doc = yaml.safe_load(kubeconfig.read_text())
    server: Optional[str] = doc["clusters"][0]["cluster"]["server"]
    assert server
    return server
