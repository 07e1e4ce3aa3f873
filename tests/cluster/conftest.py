"""Fixtures for tests that need the real control plane (see controlplane.py).

* ``control_plane`` (session): a running :class:`controlplane.ControlPlane`.
* ``namespace`` (function): a fresh namespace (default ServiceAccount ready), deleted after.
* ``job_ns`` (function): the same, enforcing Pod Security "restricted" (where the operator's pods go).
* ``operator_kubeconfig`` (module): the chart installed; a kubeconfig of its ServiceAccount, the
  identity the operator runs as in the tests that start it as a process.

Every test that uses ``control_plane`` gets the ``cluster`` marker. If the binaries
are missing the fixture FAILS with instructions (run ``tests/cluster/build.sh``),
unless ``GRPO_SKIP_CLUSTER=1``, which skips instead. Logs of every component are kept
in ``$GRPO_CLUSTER_LOGS`` or pytest's tmp dir; a failing test's report names it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # --import-mode=importlib: make `import controlplane` work
    sys.path.insert(0, _HERE)

import controlplane

from support.cluster_jobs import CHART, RESTRICTED, install_crd
from support.operator import OperatorProcess, start_operator

_LOGS_KEY = pytest.StashKey[str]()
RELEASE = "grpo-e2e"
SERVICE_ACCOUNT = f"{RELEASE}-grpo-operator"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real control plane built by tests/cluster/build.sh")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get("GRPO_SKIP_CLUSTER") == "1":
        pytest.skip("GRPO_SKIP_CLUSTER=1: cluster tests skipped")
    env_logs = os.environ.get("GRPO_CLUSTER_LOGS")
    logs_dir = Path(env_logs) if env_logs else tmp_path_factory.mktemp("cluster-logs", numbered=True)
    request.config.stash[_LOGS_KEY] = str(logs_dir)
    error = None
    try:
        bin_dir = controlplane.find_bin_dir()
        cp = controlplane.ControlPlane.start(logs_dir=logs_dir, bin_dir=bin_dir)
    except controlplane.ControlPlaneError as exc:
        error = str(exc)
    if error is not None:  # outside the except block: no chained traceback
        pytest.fail(f"test control plane unavailable: {error}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def namespace(control_plane: controlplane.ControlPlane, request: pytest.FixtureRequest):
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "control_plane" in getattr(item, "fixturenames", ()):
        logs = item.config.stash.get(_LOGS_KEY, None)
        if logs and Path(logs).is_dir() and any(Path(logs).iterdir()):
            report.sections.append(("cluster logs", f"control-plane component logs: {logs}"))


@pytest.fixture(scope="session")
def grpojob_crd(control_plane: controlplane.ControlPlane) -> str:
    """The generated GRPOJob CRD, applied and Established; yields its name."""
    return install_crd(control_plane)


@pytest.fixture(scope="module")
def operator_kubeconfig(control_plane: controlplane.ControlPlane) -> Iterator[Path]:
    """Install the chart; a kubeconfig for its ServiceAccount (what the operator runs as).

    A namespace of its own each time: the last module's may still be terminating."""
    release_ns = control_plane.create_namespace(f"{RELEASE}-system-{uuid.uuid4().hex[:5]}", labels=RESTRICTED)
    crd_exists = control_plane.kubectl("get", "crd", "grpojobs.grpo.dev", check=False).returncode == 0
    if crd_exists:  # applied by a test before, not by helm: the pool's CRD beside it the same way
        install_crd(control_plane)
    control_plane.helm(
        "install", RELEASE, str(CHART), "--namespace", release_ns,
        "--set", f"crds.install={str(not crd_exists).lower()}",
    )  # fmt: skip
    control_plane.kubectl("wait", "--for=condition=Established", "crd/grpojobs.grpo.dev", "--timeout=60s")
    # the chart's operator pod passes Pod Security "restricted" (it runs on a fake node; no image runs here)
    controlplane.wait_until(
        lambda: control_plane.get_json("pods", namespace=release_ns)["items"], timeout=30, what="the operator pod"
    )
    yield control_plane.kubeconfig_for_serviceaccount(release_ns, SERVICE_ACCOUNT, create=False)
    control_plane.helm("uninstall", RELEASE, "--namespace", release_ns, check=False)
    control_plane.delete_namespace(release_ns)


@pytest.fixture
def job_ns(control_plane: controlplane.ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace that enforces Pod Security "restricted"."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = control_plane.create_namespace(f"{base}-{uuid.uuid4().hex[:5]}", labels=RESTRICTED)
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture
def operator(
    control_plane: controlplane.ControlPlane, operator_kubeconfig: Path, job_ns: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator as the chart's ServiceAccount, watching the test's namespace (test_training_e2e.py has its
    own, on the process node)."""
    proc = start_operator(control_plane, operator_kubeconfig, job_ns, tmp_path / "operator.log")
    try:
        yield proc
    finally:
        proc.stop_and_check_log()
