"""The operator as a real process (``python -m grpo_operator``) for cluster tests.

It runs with whatever kubeconfig it is given — in the e2e tests, the chart's
ServiceAccount's — so RBAC is exercised exactly as in a cluster. No image runs
here, hence a local process instead of the chart's Deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from controlplane import ControlPlane


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """Start, kill (SIGKILL, as a crash), restart and scrape one operator process."""

    def __init__(
        self,
        env: Mapping[str, str],
        namespaces: Sequence[str],
        log_path: Path,
        settings: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.namespaces = list(namespaces)
        self.log_path = log_path
        self.env = {**env, **(settings or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0

    def start(self, wait: bool = True, timeout: float = 30.0) -> OperatorProcess:
        args = [sys.executable, "-m", "grpo_operator", "--metrics-port", str(self.metrics_port),
                "--health-port", str(self.health_port)]  # fmt: skip
        for ns in self.namespaces:
            args += ["--namespace", ns]
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1
        if wait:
            self.wait_healthy(timeout)
        return self

    def _get(self, port: int, path: str) -> Optional[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.read().decode() if resp.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._get(self.health_port, "/healthz") is not None:
                return
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """/healthz's status code and JSON body (0 and {} when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return 0, {}

    def reconciles(self, namespace: str, name: str) -> float:
        """grpo_operator_reconcile_total of one job on /metrics (0 before its first reconcile)."""
        series = f'grpo_operator_reconcile_total{{name="{name}",namespace="{namespace}"}} '
        for line in self.metrics().splitlines():
            if line.startswith(series):
                return float(line[len(series) :])
        return 0.0

    def metrics(self) -> str:
        text = self._get(self.metrics_port, "/metrics")
        if text is None:
            raise RuntimeError("operator /metrics not reachable")
        return text

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies or the OOM killer strikes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def stop_and_check_log(self) -> None:
        """Stop, then fail if the operator logged a traceback or an RBAC refusal."""
        self.stop()
        errors = [line for line in self.log_text().splitlines() if "Traceback" in line or "Forbidden" in line]
        assert not errors, "operator logged errors:\n" + self.log_tail(80)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


def operator_env(base: Mapping[str, str]) -> dict[str, str]:
    """The parent environment without variables that would redirect the operator elsewhere."""
    env = dict(base)
    for key in list(env):
        if key.startswith("GRPO_") and key not in ("GRPO_CLUSTER_BIN_DIR",):
            env.pop(key)
    env.setdefault("PATH", os.environ.get("PATH", ""))
    return env


def kubeconfig_namespace(kubeconfig: Path) -> str:
    """The namespace of a kubeconfig's current context (a ServiceAccount's: its own namespace)."""
    import yaml

    doc = yaml.safe_load(kubeconfig.read_text())
    (context,) = [c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"]]
    return str(context.get("namespace", "default"))


NETWORK_SETTINGS = ("GRPO_NETWORK_POLICIES", "GRPO_OPERATOR_NAMESPACE", "GRPO_OPERATOR_POD_LABELS", "GRPO_METRICS_NAMESPACES")


def chart_network_settings(cp: ControlPlane, release_ns: str) -> dict[str, str]:
    """What the chart's Deployment in ``release_ns`` tells the operator about NetworkPolicies (on by default):
    where it runs. Empty when no chart is installed there."""
    items = cp.get_json("deployments", namespace=release_ns)["items"]
    if len(items) != 1:
        return {}
    (container,) = items[0]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if e["name"] in NETWORK_SETTINGS}


def start_operator(
    cp: ControlPlane, kubeconfig: Path, ns: str, log: Path, extra: Optional[Mapping[str, str]] = None
) -> OperatorProcess:
    """The operator with ``kubeconfig``'s identity, watching ``ns``, with quick resync and progress polls,
    and the NetworkPolicy settings of the chart whose ServiceAccount that identity is."""
    settings = {
        "GRPO_RESYNC_SECONDS": "2",
        "GRPO_PROGRESS_POLL_SECONDS": "1",
        "GRPO_TRAINER_PORT": str(free_port()),
        "GRPO_LOG_LEVEL": "INFO",
        **chart_network_settings(cp, kubeconfig_namespace(kubeconfig)),
        **(extra or {}),
    }
    return OperatorProcess(operator_env(cp.env(kubeconfig=kubeconfig)), [ns], log, settings).start()
