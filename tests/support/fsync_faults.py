"""A narrow fault seam: ``os.fsync`` fails (EIO, ENOSPC, ...) for the files whose path matches a pattern.

A disk that acknowledges writes and then fails to make them durable cannot be made on
this machine without root-only block-device tricks (dm-error, dm-flakey), so the tests
that need one wrap ``os.fsync`` instead: every other call, and every other file, goes
to the real fsync. :func:`trainer_command` starts the trainer process with the fault
installed (``python -m grpo_trainer.run.main`` as in a pod, through :mod:`runpy`).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_real_fsync = os.fsync
TESTS_DIR = Path(__file__).resolve().parents[1]


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def install(pattern: str, code: int) -> None:
    """From now on, fsync of a file whose path matches the regex ``pattern`` raises OSError(``code``)."""
    match = re.compile(pattern).search

    def fsync(fd: int) -> None:
        path = _path_of(fd)
        if match(path):
            raise OSError(code, f"{os.strerror(code)} (injected by tests/support/fsync_faults.py)", path)
        _real_fsync(fd)

    os.fsync = fsync


def uninstall() -> None:
    os.fsync = _real_fsync


@contextmanager
def failing_fsync(pattern: str, code: int = errno.EIO) -> Iterator[None]:
    install(pattern, code)
    try:
        yield
    finally:
        uninstall()


def trainer_command(config: Path, pattern: str, code: int) -> list[str]:
    """The one-process trainer's command (``python -m grpo_trainer.run.main --config``) with the fault installed."""
    boot = (
        f"import runpy, sys; sys.path.insert(0, {str(TESTS_DIR)!r}); "
        f"from support.fsync_faults import install; install({pattern!r}, {code}); "
        "runpy.run_module('grpo_trainer.run.main', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", boot, "--config", str(config)]
