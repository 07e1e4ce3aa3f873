"""Children never outlive the runner: death signal on SIGKILL of the parent, whole groups killed on stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from grpo_operator.local.processes import group_members, kill_group, spawn, stop_group


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


# A process tree like vLLM's: a leader that starts a grandchild and records its pid.
TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(600)
    """
)


def test_child_dies_when_the_runner_is_killed_with_sigkill(tmp_path: Path) -> None:
    # a stand-in runner that spawns a child the way the local runner does, then waits to be killed
    runner_code = textwrap.dedent(
        f"""
        import signal, sys, time
        from pathlib import Path
        from grpo_operator.local.processes import spawn
        proc = spawn([sys.executable, "-c", "import time; time.sleep(600)"], env={{}}, log_path=Path({str(tmp_path / "child.log")!r}),
                     cwd=Path({str(tmp_path)!r}), death_signal=signal.SIGKILL)
        print(proc.pid, flush=True)
        time.sleep(600)
        """
    )
    runner = subprocess.Popen([sys.executable, "-c", runner_code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        child = int(runner.stdout.readline())  # type: ignore[union-attr]
        assert alive(child)
        runner.kill()  # SIGKILL: no finally, no atexit
        runner.wait()
        assert wait_until(lambda: not alive(child)), f"child {child} outlived its SIGKILLed parent"
    finally:
        runner.kill()


def test_stop_group_also_kills_what_an_exited_leader_left_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = spawn(
        [sys.executable, "-c", TREE, str(pid_file)],
        env=dict(os.environ),
        log_path=tmp_path / "tree.log",
        cwd=tmp_path,
        death_signal=signal.SIGTERM,
    )
    assert wait_until(lambda: pid_file.is_file() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)  # the leader crashes; its child keeps running, as vLLM's engine core does
    proc.wait()
    assert alive(grandchild)
    stop_group(proc, grace_seconds=1.0)
    assert not alive(grandchild)
    assert [m for m in group_members(proc.pid) if not m.zombie] == []


def test_kill_group_is_immediate_for_a_process_ignoring_sigterm(tmp_path: Path) -> None:
    proc = spawn(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
        env=dict(os.environ),
        log_path=tmp_path / "stubborn.log",
        cwd=tmp_path,
        death_signal=signal.SIGKILL,
    )
    started = time.monotonic()
    kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
