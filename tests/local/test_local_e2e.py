"""``grpo-local`` end to end on the embedded default: real vLLM (CPU build), the real trainer, the tiny model.

These prove the runner's contract (completion, report, Ctrl-C → checkpoint → resume,
no process left behind) and, on the same run, that the embedded default as it runs on a
CPU learns through those faults (the margin of tests/support/learning.py; the overlapped
mode is tests/local/test_compile.py, through compile()).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from grpo_trainer.contract.progress import Progress
from support.learning import assert_learned_and_served, proof_steps
from support.trainer_log import steps_done

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

RUN_TIMEOUT = 1500.0


def wait_for_a_step(runner: subprocess.Popen, run_dir: Path, out: Path) -> None:
    """Until the run reports a finished step (the runner must stay alive meanwhile)."""
    wait_for_a_step_after(runner, run_dir, out, 0)


def wait_for_a_step_after(runner: subprocess.Popen, run_dir: Path, out: Path, step: int) -> None:
    """Until the run reports a step after ``step`` finished (the runner must stay alive meanwhile)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        progress = Progress.read(run_dir) if (run_dir / "progress.json").is_file() else None
        if progress is not None and progress.step > step:
            return
        assert runner.poll() is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, "no step finished in time"
        time.sleep(0.5)



def vllm_server_pid(marker: str) -> int | None:
    """The vLLM API server started by this test's runner (found by the marker in its environment)."""
    needle = f"GRPO_LOCAL_TEST_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in cmdline and needle in environ.split(b"\0"):
            return int(entry.name)
    return None


def wait_for_output(runner: subprocess.Popen, out: Path, text: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while text not in out.read_text(errors="replace"):
        assert runner.poll() is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in time"
        time.sleep(0.5)


@pytest.mark.timeout(2400)
def test_the_default_survives_a_killed_vllm_and_ctrl_c_resumes_to_a_finished_report_and_learns(
    cli,
    start_cli,
    tmp_path: Path,
    ports: tuple[int, int],
    marker: str,
    survivors: Callable[[], list[str]],
) -> None:
    """One run of the embedded default (no job file) through the faults a user meets, in order
    (one run, not one per fault: CI time): vLLM SIGKILLed mid-run (restarted with the same
    command, the trainer waits for it), then Ctrl-C (stops after a checkpoint), then the same
    command again (resumes from that step and finishes with the summary, the report and the
    adapter on disk, served by vLLM) -- and the validation score rose beyond noise."""
    steps = proof_steps()  # the learning figure's shape (the default's 10 steps cost CI minutes)
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), "--steps", str(steps), "--port", str(ports[0]), "--trainer-port", str(ports[1])]
    first = tmp_path / "first.out"
    runner = start_cli(*args, out=first)
    try:
        wait_for_a_step(runner, run_dir, first)
        server = vllm_server_pid(marker)
        assert server is not None
        os.kill(server, signal.SIGKILL)  # a crash: its engine core is left behind for the runner to clean up
        wait_for_output(runner, first, "vLLM is serving again")
        restarted_at = Progress.read(run_dir)
        assert restarted_at is not None
        wait_for_a_step_after(runner, run_dir, first, restarted_at.step)
        runner.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C delivers to the runner
        code = runner.wait(RUN_TIMEOUT)
    finally:
        if runner.poll() is None:
            runner.kill()
    first_output = first.read_text()
    # the runner's part: the crash is noticed, vLLM restarted with the same command, nothing left behind
    assert "vLLM exited with code -9; restarting it with the same command (1/" in first_output
    assert vllm_server_pid(marker) is None and survivors() == []
    # the trainer's part: it met the outage, waited for vLLM to come back (wait_timeout_seconds),
    # served its adapter again and went on (the steps after the restart are asserted below)
    assert code == 0, first_output[-4000:]
    outage = ("vLLM unavailable", "policy sampling failed; waiting for vLLM", "no longer serves")
    trainer_lines = (run_dir / "logs" / "trainer.log").read_text()
    assert any(sign in trainer_lines for sign in outage), "the trainer never met the vLLM outage"

    stopped = Progress.read(run_dir)
    assert stopped is not None and stopped.phase == "stopped", stopped
    assert 2 <= stopped.step < steps
    assert (run_dir / "checkpoints" / f"step-{stopped.step}" / "COMPLETE").is_file()
    assert "stopped" in first_output and "resume" in first_output
    trainer_log = run_dir / "logs" / "trainer.log"
    first_log_size = trainer_log.stat().st_size
    assert steps_done(trainer_log.read_text()) == list(range(1, stopped.step + 1))

    result = cli(*args, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming {run_dir} from the checkpoint of step {stopped.step}" in result.stdout
    with open(trainer_log) as f:
        f.seek(first_log_size)
        second_log = f.read()
    assert steps_done(second_log) == list(range(stopped.step + 1, steps + 1)), (
        "the rerun did not continue where it stopped"
    )
    final = Progress.read(run_dir)
    assert final is not None
    assert (final.phase, final.step, final.finished, final.error) == ("done", steps, True, None)
    assert final.baseline_val_score == stopped.baseline_val_score  # the baseline was not re-measured
    assert steps in final.val_scores

    # what the finished run leaves: the summary, the report, the last adapter and checkpoint
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["outcome"] == "finished" and summary["steps"] == steps
    assert summary["baseline_val_score"] == final.baseline_val_score
    assert summary["tokens_generated"] > 0
    assert sorted(int(s) for s in summary["reward_means"]) == list(range(1, steps + 1))  # every step, both runs
    assert (run_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "validation score, baseline" in result.stdout and "finished" in result.stdout
    assert (run_dir / "adapters" / f"step-{steps}" / "adapter_config.json").is_file()
    assert (run_dir / "checkpoints" / f"step-{steps}" / "COMPLETE").is_file()
    assert survivors() == []
    assert_learned_and_served(run_dir)

    # the result a user takes away: the best adapter by validation (it learned, so not the base), described
    assert final.result is not None and final.result.finished and final.best_step
    assert (final.result.step, final.result.adapter) == (final.best_step, "result/adapter")
    best_weights = run_dir / "adapters" / f"step-{final.best_step}" / "adapter_model.safetensors"
    assert (run_dir / "result" / "adapter" / "adapter_model.safetensors").read_bytes() == best_weights.read_bytes()
    assert json.loads((run_dir / "result" / "result.json").read_text())["val_scores"][str(final.best_step)] == (
        final.best_val_score
    )
    assert json.loads((run_dir / "result" / "program.json").read_text())  # the student's DSPy state
    assert summary["result_dir"] == str(run_dir / "result") and f"{run_dir / 'result'} (best adapter" in result.stdout


def test_second_ctrl_c_kills_everything_at_once(
    start_cli, tmp_path: Path, ports: tuple[int, int], survivors: Callable[[], list[str]]
) -> None:
    run_dir = tmp_path / "run"
    runner = start_cli(
        "--run-dir", str(run_dir), "--port", str(ports[0]), "--trainer-port", str(ports[1]), out=tmp_path / "out"
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (run_dir / "progress.json").exists():  # the trainer is set up and starts its baseline validation
            assert runner.poll() is None, (tmp_path / "out").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        runner.send_signal(signal.SIGINT)
        time.sleep(1.0)
        runner.send_signal(signal.SIGINT)
        code = runner.wait(60)  # no waiting for a step or a checkpoint
    finally:
        if runner.poll() is None:
            runner.kill()
    output = (tmp_path / "out").read_text()
    assert code == 130, output[-3000:]
    assert "second interrupt: killing the trainer and vLLM" in output
    assert survivors() == []
