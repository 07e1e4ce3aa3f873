"""An API server that accepts the connection and then says nothing (a failover behind a load
balancer drops it without a reset) must fail the operator's call, not hold its worker forever.
The silent server is a socket of this test: no real API server can be made to hang like that."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from grpo_operator.controller import kube
from grpo_operator.controller.kube import Cluster


@pytest.fixture
def silent_server() -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


def test_every_api_call_gives_up_on_a_silent_api_server(silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (1.0, 1.0))
    config = client.Configuration(host=silent_server)
    config.retries = 0
    cluster = Cluster(client.ApiClient(config))
    calls = {
        "get_job": lambda: cluster.get_job("ns", "papillon"),
        "read": lambda: cluster.read("ConfigMap", "ns", "papillon-config"),
        "patch_status": lambda: cluster.patch_status("ns", "papillon", {"step": 1}, "1"),
        "delete_pod": lambda: cluster.delete_pod("ns", "papillon-trainer-0"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(Exception):  # urllib3's timeout error, as the reconcile's retry sees it
            call()
        assert time.monotonic() - started < 5, f"{name} waited on a silent server"
