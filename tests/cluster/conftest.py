"""Fixtures for tests that need the real control plane (see controlplane.py).

* ``control_plane`` (session): a running :class:`controlplane.ControlPlane`.
* ``namespace`` (function): a fresh namespace (default ServiceAccount ready), deleted after.

Every test that uses ``control_plane`` gets the ``cluster`` marker. If the binaries
are missing the fixture FAILS with instructions (run ``tests/cluster/build.sh``),
unless ``GRPO_SKIP_CLUSTER=1``, which skips instead. Logs of every component are kept
in ``$GRPO_CLUSTER_LOGS`` or pytest's tmp dir; a failing test's report names it.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # --import-mode=importlib: make `import controlplane` work
    sys.path.insert(0, _HERE)

import controlplane

from support.cluster_jobs import install_crd

_LOGS_KEY = pytest.StashKey[str]()


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
