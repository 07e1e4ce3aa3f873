"""Child processes that never outlive the local runner.

Every child starts in its own session (so a terminal's Ctrl-C reaches only the
runner, which decides what each child gets, and so a whole tree — vLLM's API
server and its engine core — is signalled as one process group), and asks the
kernel for a signal when the runner dies (``PR_SET_PDEATHSIG``), which covers a
runner killed with SIGKILL where no ``finally`` or ``atexit`` runs.

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: spawn from
the main thread only (the runner does).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from grpo_trainer.contract.vllm_command import vllm_command
from grpo_trainer.vllm.process import VLLMProcess

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36

# Loaded before any fork: the child only calls into it.
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Process groups started here and not yet stopped; killed at interpreter exit.
_LIVE_GROUPS: set[int] = set()


def die_with_parent(death_signal: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``death_signal`` when this process dies."""
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC.prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), death_signal)

    return preexec


def become_subreaper() -> None:
    """Adopt orphaned descendants (vLLM's engine core when its API server dies first) so we can reap them.

    Without it they are reparented to PID 1, which in many containers never reaps zombies.
    """
    if _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.debug("PR_SET_CHILD_SUBREAPER failed (errno %d)", ctypes.get_errno())


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path,
    death_signal: int,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new process group, stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent(death_signal),
        )
    _LIVE_GROUPS.add(proc.pid)
    log.debug("started pid %d: %s (log %s)", proc.pid, " ".join(argv), log_path)
    return proc


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group, if any process of it is left."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class Member:
    pid: int
    ppid: int
    zombie: bool


def group_members(pgid: int) -> list[Member]:
    """The processes of a process group (zombies included), from /proc."""
    members: list[Member] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:
            members.append(Member(pid=int(entry), ppid=int(fields[1]), zombie=fields[0] in (b"Z", b"X")))
    return members


def _reap_adopted(members: list[Member], leader: int) -> None:
    """Reap members reparented to us (see :func:`become_subreaper`); Popen reaps the leader."""
    me = os.getpid()
    for m in members:
        if m.ppid == me and m.pid != leader:
            try:
                os.waitpid(m.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def stop_group(proc: subprocess.Popen[bytes], *, grace_seconds: float, sig: int = signal.SIGTERM) -> None:
    """Ask the group to stop, wait for its leader up to ``grace_seconds``, then kill what is left.

    The final SIGKILL to the whole group also takes processes whose leader already
    exited (a crashed vLLM API server leaves its engine core running).
    """
    pgid = proc.pid
    if proc.poll() is None:
        signal_group(pgid, sig)
        try:
            proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not exit %.0f s after signal %d; killing its group", pgid, grace_seconds, sig)
    kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes], *, settle_seconds: float = 10.0) -> None:
    """SIGKILL the whole group, reap the leader, and wait until no member is left."""
    pgid = proc.pid
    signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(settle_seconds)
    except subprocess.TimeoutExpired:
        log.error("pid %d survived SIGKILL for %.0f s", pgid, settle_seconds)
    deadline = time.monotonic() + settle_seconds
    while True:
        members = group_members(pgid)
        _reap_adopted(members, leader=pgid)
        alive = [m.pid for m in members if not m.zombie]
        if not alive:
            break
        if time.monotonic() > deadline:
            log.error("processes %s of group %d survived SIGKILL", alive, pgid)
            break
        time.sleep(0.05)
    _LIVE_GROUPS.discard(pgid)


@atexit.register
def _kill_leftovers() -> None:
    for pgid in list(_LIVE_GROUPS):
        signal_group(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()


class LocalVLLM(VLLMProcess):
    """:class:`VLLMProcess` whose server dies with the runner, and whose stop also kills an orphaned engine core.

    SIGTERM is the death signal: the API server then shuts its engine core down
    itself (SIGKILL would leave the engine core running).
    """

    def start(self) -> "LocalVLLM":
        cmd = vllm_command(self.spec)
        log.info("starting vLLM on port %d (log %s)", self.spec.port, self.log_path)
        self.proc = spawn(
            cmd.argv,
            env={**os.environ, **cmd.env, **self.env},
            log_path=self.log_path,
            cwd=self.cwd,
            death_signal=signal.SIGTERM,
        )
        try:
            self.wait_healthy()
        except BaseException:
            self.stop(timeout=5.0)
            raise
        return self

    def exited(self) -> int | None:
        """The server's exit code once it has exited by itself; None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, grace_seconds=timeout)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_group(proc)
