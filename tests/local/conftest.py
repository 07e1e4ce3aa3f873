"""Fixtures of the local runner's tests: the CLI as a real subprocess, free ports, job files, process census."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpo_operator.local.default import default_job, default_model_dir
from support.checkout import checkout_env

MARKER_ENV = "GRPO_LOCAL_TEST_MARKER"

CLI = Callable[..., subprocess.CompletedProcess[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ports() -> tuple[int, int]:
    """A free vLLM port and a free trainer port (never the defaults other sessions may hold)."""
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return default_model_dir()


@pytest.fixture
def default_doc(tiny_model: Path) -> dict[str, Any]:
    return copy.deepcopy(default_job(tiny_model))


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(doc: dict[str, Any], name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def marker() -> str:
    """A value put in the runner's environment; every descendant inherits it (see :func:`live_with_marker`)."""
    return uuid.uuid4().hex


def cli_env(marker: str) -> dict[str, str]:
    """The runner's environment: this checkout's packages and nothing else on the import path."""
    env = {**os.environ, MARKER_ENV: marker, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return checkout_env(env)


@pytest.fixture
def cli(tmp_path: Path, marker: str) -> CLI:
    """Run ``grpo-local`` (as ``python -m``, outside the repo root) and wait for it."""

    def run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "grpo_operator.local.cli", *args],
            cwd=tmp_path,
            env=cli_env(marker),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def live_with_marker(marker: str) -> list[str]:
    """Processes (not zombies) whose environment carries ``marker``: descendants of a runner, wherever reparented."""
    found: list[str] = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        state = stat[stat.rindex(b")") + 2 :].split()[0]
        if state not in (b"Z", b"X") and needle in environ.split(b"\0"):
            comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
            found.append(f"{entry} ({comm})")
    return found


@pytest.fixture
def survivors(marker: str) -> Callable[[], list[str]]:
    """Live descendants of the runners this test started (call after they exited)."""
    return lambda: live_with_marker(marker)


@pytest.fixture
def start_cli(tmp_path: Path, marker: str) -> Callable[..., subprocess.Popen[bytes]]:
    """Start ``grpo-local`` without waiting (output to ``out``); the test owns the process."""

    def start(*args: str, out: Path) -> subprocess.Popen[bytes]:
        with open(out, "wb") as sink:
            return subprocess.Popen(
                [sys.executable, "-m", "grpo_operator.local.cli", *args],
                cwd=tmp_path,
                env=cli_env(marker),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    return start
