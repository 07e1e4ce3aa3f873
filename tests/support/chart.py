"""The chart on the real control plane: ``helm install``, and the operator run as its Deployment would.

No image runs here, so the operator is a local process with the chart
ServiceAccount's token and the env and ``--namespace`` args the chart put on its
Deployment: the chart's RBAC and settings are what is exercised.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from controlplane import ControlPlane

from support.cluster_jobs import CHART, RESTRICTED
from support.operator import OperatorProcess, free_port, operator_env

CRD = "crd/grpojobs.grpo.dev"
# Faster than the chart's defaults so the tests take seconds; everything else is the Deployment's.
FAST = {"GRPO_RESYNC_SECONDS": "2", "GRPO_PROGRESS_POLL_SECONDS": "1"}


def crd_exists(cp: ControlPlane) -> bool:
    return cp.kubectl("get", CRD, check=False).returncode == 0


def helm_install(cp: ControlPlane, release: str, ns: str, *args: str, chart: Path = CHART) -> str:
    """``helm install``; takes over the CRD when an earlier install or kubectl left it (it is kept on uninstall)."""
    takeover = ["--take-ownership"] if crd_exists(cp) else []
    return cp.helm("install", release, str(chart), "--namespace", ns, *takeover, *args).stdout


def deployment(cp: ControlPlane, ns: str) -> dict[str, Any]:
    (item,) = cp.get_json("deployments", namespace=ns)["items"]
    return item


def start_operator_like_deployment(
    cp: ControlPlane, release_ns: str, service_account: str, log: Path, settings: Mapping[str, str] | None = None
) -> OperatorProcess:
    """The operator with the chart ServiceAccount's identity and the Deployment's env and namespace args.

    ``settings`` (GRPO_* variables) override the Deployment's, after :data:`FAST`.
    """
    container = deployment(cp, release_ns)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e} | FAST
    # Pod IPs are loopback here: on the default port, /progress may reach a trainer someone else runs on this host.
    env["GRPO_TRAINER_PORT"] = str(free_port())
    env.update(settings or {})
    namespaces = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--namespace=")]
    kubeconfig = cp.kubeconfig_for_serviceaccount(release_ns, service_account, create=False)
    return OperatorProcess(operator_env(cp.env(kubeconfig=kubeconfig)), namespaces, log, env).start()


@contextlib.contextmanager
def chart_operator(
    cp: ControlPlane, release: str, watch_ns: str, log: Path, settings: Mapping[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """The chart installed (release ``release``, its own namespace) to watch ``watch_ns``, and the operator run
    as its Deployment would; on exit, the operator's log is checked for errors and the release removed."""
    release_ns = f"grpo-system-{uuid.uuid4().hex[:5]}"
    cp.create_namespace(release_ns, labels=RESTRICTED)
    helm_install(cp, release, release_ns, "--set", f"watchNamespaces={{{watch_ns}}}")
    proc = start_operator_like_deployment(cp, release_ns, f"{release}-grpo-operator", log, settings)
    try:
        yield proc
    finally:
        proc.stop_and_check_log()
        cp.helm("uninstall", release, "--namespace", release_ns, check=False)
        cp.delete_namespace(release_ns)
