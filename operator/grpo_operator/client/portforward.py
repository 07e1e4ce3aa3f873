"""A local port forwarded to a job's pod through the Kubernetes API, as ``kubectl port-forward`` does.

A notebook outside the cluster cannot resolve the vLLM Service's name, and the API
server's service proxy drops the ``Authorization`` header that carries vLLM's API
key (it consumes the header when it authenticates the user). A port-forward carries
the raw connection, so the served result answers here exactly as in the cluster.
Each accepted connection opens its own forward to the pod that currently serves
(the operator replaces a lost vLLM pod under a new name).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class PortForward:
    """``127.0.0.1:<port>`` here → ``<pod>:<remote_port>`` in the cluster; ``close()`` stops it."""

    def __init__(self, core_api: Any, namespace: str, pod: Callable[[], str], remote_port: int) -> None:
        self.core = core_api
        self.namespace = namespace
        self.pod = pod
        self.remote_port = remote_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name=f"port-forward-{self.port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        from kubernetes.stream import portforward

        try:
            pod = self.pod()
            forward = portforward(
                self.core.connect_get_namespaced_pod_portforward, pod, self.namespace, ports=str(self.remote_port)
            )
            remote = forward.socket(self.remote_port)
        except Exception as exc:  # the pod is gone or not ready: this connection fails, the next tries again
            log.warning("port-forward to %s:%d failed: %s", self.namespace, self.remote_port, exc)
            conn.close()
            return
        try:
            _pump(conn, remote)
        finally:
            for end in (conn, remote):
                try:
                    end.close()
                except OSError:
                    pass
            try:
                forward.close()
            except Exception:
                pass

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass


def _pump(a: Any, b: Any) -> None:
    """Copy bytes both ways until either side closes."""
    ends = [a, b]
    while True:
        readable, _, broken = select.select(ends, [], ends, 60.0)
        if broken:
            return
        for end in readable:
            try:
                data = end.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            (b if end is a else a).sendall(data)
