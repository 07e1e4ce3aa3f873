"""The trainer pod's launcher (grpo_trainer.run.launch) with real rank processes.

What torchrun got wrong for a pod, checked here with three CPU ranks:

* SIGTERM reaches every rank once and the launcher waits for their checkpoints,
  however long they take, then exits 75 (torchrun: SIGKILL after 30 s, exit 1);
* a rank that dies ends the attempt at once: the others are killed, exit 1; a
  killed launcher takes its ranks with it;
* ranks wait for a main rank that is late (vLLM starting, validation) on the store,
  not in a collective: a broadcast reached 3x later than ``ddp_timeout`` still works.

This file is also the ranks' script (``python test_launch.py MODE DIR``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo_trainer.contract import exit_codes
from grpo_trainer.run.launch import verdict

pytestmark = pytest.mark.timeout(300)

RANKS = 3
SLOW_CHECKPOINT_SECONDS = 4  # longer than a test would wait for a plain exit


def launch(mode: str, out: Path) -> subprocess.Popen[str]:
    rank_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in rank_vars}
    return subprocess.Popen(
        [sys.executable, "-m", "grpo_trainer.run.launch", "--nproc", str(RANKS), __file__, mode, str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(paths: list[Path], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"ranks never reached {paths}"
        time.sleep(0.1)


def test_the_launchers_exit_status_is_the_ranks_verdict() -> None:
    assert verdict([0, 0, 0]) == exit_codes.DONE
    assert verdict([75, 75, 75]) == verdict([0, 75, 75]) == exit_codes.INTERRUPTED
    assert verdict([75, 1, 75]) == verdict([75, -9, 75]) == verdict([0, -15, 0]) == exit_codes.FAILED
    # the main rank found the job invalid and the others were killed: still invalid, no retry
    assert verdict([exit_codes.INVALID_JOB, -9, -9]) == exit_codes.INVALID_JOB


def test_sigterm_lets_every_rank_checkpoint_and_the_pod_exits_75(tmp_path: Path) -> None:
    proc = launch("stop", tmp_path)
    wait_for([tmp_path / f"rank-{r}.ready" for r in range(RANKS)], proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # a second one (kubectl delete twice) changes nothing
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == exit_codes.INTERRUPTED, output[-3000:]
    for rank in range(RANKS):
        assert (tmp_path / f"rank-{rank}.signals").read_text() == "SIGTERM\n", f"rank {rank} got the signal once"
        assert (tmp_path / f"rank-{rank}.checkpointed").exists(), f"rank {rank} was cut off before its checkpoint"


def test_a_killed_launcher_leaves_no_rank_behind(tmp_path: Path) -> None:
    from support.ranks import alive  # here: the ranks run this file without the tests on their path

    proc = launch("stop", tmp_path)
    ready = [tmp_path / f"rank-{r}.ready" for r in range(RANKS)]
    wait_for(ready, proc)
    pids = [int(p.read_text()) for p in ready]
    proc.kill()  # outside a container nothing else would reap the ranks
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"ranks outlived their launcher: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)


def test_a_dead_rank_ends_the_attempt_at_once(tmp_path: Path) -> None:
    proc = launch("die", tmp_path)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == exit_codes.FAILED, output[-3000:]
    assert "rank 1 exited -9" in output
    assert not any(tmp_path.glob("rank-*.survived")), "a rank outlived the dead one by 60 s"


def test_ranks_wait_for_a_late_main_rank_beyond_the_collective_timeout(tmp_path: Path) -> None:
    proc = launch("late-main", tmp_path)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == exit_codes.DONE, output[-3000:]
    for rank in range(RANKS):
        assert (tmp_path / f"rank-{rank}.received").read_text() == "plan from rank 0"


# ---- the ranks ------------------------------------------------------------------------------

COLLECTIVE_TIMEOUT = 3  # seconds: the late main rank arrives after 3x this
MAIN_LATE_SECONDS = 3 * COLLECTIVE_TIMEOUT


def _rank_stop(out: Path, rank: int) -> int:
    """Waits for SIGTERM like the trainer (StopFlag), then 'checkpoints' slowly and exits 75."""
    from grpo_trainer.run.stopflag import StopFlag

    signals = (out / f"rank-{rank}.signals").open("a")

    def record(signum: int, _frame: object) -> None:
        signals.write(f"{signal.Signals(signum).name}\n")
        signals.flush()
        stop.event.set()

    stop = StopFlag()
    signal.signal(signal.SIGTERM, record)
    (out / f"rank-{rank}.ready").write_text(str(os.getpid()))
    while not stop.requested:
        time.sleep(0.05)
    time.sleep(SLOW_CHECKPOINT_SECONDS)
    (out / f"rank-{rank}.checkpointed").touch()
    return exit_codes.INTERRUPTED


def _rank_die(out: Path, rank: int) -> int:
    if rank == 1:
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # the launcher must not let this run out
    (out / f"rank-{rank}.survived").touch()
    return exit_codes.DONE


def _rank_late_main(out: Path, rank: int) -> int:
    from grpo_trainer.run.distributed import broadcast_object, init_distributed, shutdown, wait_for_main

    dist = init_distributed("cpu", timeout_seconds=COLLECTIVE_TIMEOUT)
    if dist.is_main:
        time.sleep(MAIN_LATE_SECONDS)  # vLLM starting, the baseline validation, the first rollouts
    wait_for_main(dist, "plan-1")
    plan = broadcast_object("plan from rank 0" if dist.is_main else None, dist)
    (out / f"rank-{rank}.received").write_text(str(plan))
    shutdown(dist)
    return exit_codes.DONE


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    ranks = {"stop": _rank_stop, "die": _rank_die, "late-main": _rank_late_main}
    sys.exit(ranks[mode](out_dir, int(os.environ["RANK"])))
