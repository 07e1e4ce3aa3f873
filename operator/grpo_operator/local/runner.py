"""Runs a GRPOJob on one machine: vLLM and the trainer as child processes, a directory as the volume.

Everything is checked (:mod:`.plan`) before any process starts. Then vLLM, then the
trainer; the runner follows ``progress.json``, restarts a vLLM that died, and turns
Ctrl-C into a stop after the trainer's next checkpoint (a second Ctrl-C kills).
A pool run (:func:`run_pool`) is the same with the pool's one server and a trainer per job.

Exit codes: 0 finished or stopped (rerun to resume), 1 the run failed, 2 invalid
input (the job file, or its program, metric or data as the trainer checks them
before loading the model), 130 killed by a second Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Optional

from grpo_operator.local.display import Display
from grpo_operator.local.plan import CONFIG_FILE, Plan, RunOptions, make_plan, make_pool_plan
from grpo_operator.local.processes import LocalVLLM, become_subreaper, kill_group, signal_group, spawn, stop_group
from grpo_operator.local.report import (
    Outcome,
    Summary,
    summarize,
    summary_table,
    write_plot,
    write_summary,
)
from grpo_operator.local.rundir import (
    LOGS_DIR,
    check_run_dir_owner,
    latest_checkpoint,
    lock_run_dir,
    log_tail,
    read_progress,
    write_config,
)
from grpo_operator.resolve import TRAINER_MODULE
from grpo_trainer.contract import exit_codes
from grpo_trainer.contract.export import ExportReport
from grpo_trainer.contract.progress import PROGRESS_FILE, Progress
from grpo_trainer.contract.vllm_command import VLLMServerSpec
from grpo_trainer.vllm.process import VLLMStartError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_KILLED = 0, 1, 2, 130
VLLM_LOG = "vllm.log"
TRAINER_LOG = "trainer.log"
PLOT_FILE = "report.png"
VLLM_START_TIMEOUT = 900.0  # CPU start-up is ~25 s on an idle machine, minutes on a busy one
POLL_SECONDS = 0.5
MAX_VLLM_RESTARTS = 5
TRAINER_STOP_GRACE = 60.0  # on failure paths only; a user's Ctrl-C waits for the checkpoint


class RunFailed(Exception):
    """A process failed (exit 1); the message says which and ends with its log tail."""


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    outcome: Optional[Outcome]
    summary: Optional[Summary] = None
    table: Optional[str] = None
    error: Optional[str] = None
    export: Optional[ExportReport] = None  # spec.export, after a finished run (its failure fails no run)
    export_error: Optional[str] = None  # the export could not run or report at all


class _Interrupted(Exception):
    """Ctrl-C before the trainer started: nothing to checkpoint."""


class _Killed(Exception):
    """A second Ctrl-C: children killed at once."""


class Trainer:
    """One job's trainer process: started, followed through its progress.json, and its result."""

    def __init__(self, plan: Plan, display: Display) -> None:
        self.plan = plan
        self.display = display
        self.log = plan.run_dir / LOGS_DIR / TRAINER_LOG
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.code: Optional[int] = None  # its exit code, once it has exited
        self._progress_stamp: Optional[int] = None
        self._log_offset = 0
        self._started_wall = time.time()

    def start(self) -> None:
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        log.info("starting the trainer of %s (log %s)", self.plan.name, self.log)
        self.proc = spawn(
            self.plan.trainer_argv,
            env={**os.environ, **self.plan.trainer_env, **self.plan.secret_env},
            log_path=self.log,
            cwd=self.plan.run_dir,
            death_signal=signal.SIGKILL,  # vLLM dies with us too: a trainer that finished its step would wait for it
        )

    def read_progress(self) -> None:
        path = self.plan.run_dir / PROGRESS_FILE
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._progress_stamp:
            return
        progress = read_progress(self.plan.run_dir)
        if progress is None:
            return
        self._progress_stamp = stamp
        self.display.update(progress)

    def poll(self) -> Optional[int]:
        """Its exit code once it has exited (progress read one last time then), else None."""
        if self.code is None and self.proc is not None:
            self.read_progress()
            self.code = self.proc.poll()
            if self.code is not None:
                self.read_progress()
        return self.code

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.code is None:
            signal_group(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace_seconds=TRAINER_STOP_GRACE)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)

    def _fresh(self, progress: Optional[Progress]) -> Optional[Progress]:
        """The progress document, if this run's trainer wrote it (not a previous run's)."""
        if progress is None or progress.updated_at.timestamp() < self._started_wall - 1.0:
            return None
        return progress

    def result(
        self, wall_seconds: float, *, stop_requested: bool, killed: bool = False, plot: bool = True
    ) -> RunResult:
        if self.proc is None:  # stopped before it started
            return RunResult(EXIT_OK, "stopped", error="stopped before training started")
        code = self.code
        progress = self._fresh(read_progress(self.plan.run_dir))
        error: Optional[str] = None
        if killed:
            outcome: Outcome = "stopped"
            exit_code = EXIT_KILLED
            error = "killed by a second interrupt; a rerun resumes from the last complete checkpoint"
        elif code == exit_codes.DONE:
            outcome = "finished" if progress is not None and progress.finished and progress.error is None else "stopped"
            exit_code = EXIT_OK
        elif code == exit_codes.INTERRUPTED:  # stopped by our signal after a checkpoint
            outcome = "stopped"
            exit_code = EXIT_OK
        elif code == -signal.SIGTERM and stop_requested:
            # stopped before its handler was installed (still importing): nothing after the last checkpoint is lost
            # but the step in progress
            outcome = "stopped"
            exit_code = EXIT_OK
        elif code == exit_codes.INVALID_JOB:  # found before any model loaded; no point in a rerun as is
            outcome = "failed"
            exit_code = EXIT_INVALID
            reason = progress.error_reason if progress is not None and progress.error_reason else "InvalidJob"
            what = progress.error if progress is not None and progress.error else log_tail(self.log)
            error = f"{reason}: {what}"
        else:
            outcome = "failed"
            exit_code = EXIT_FAILED
            reason = (
                progress.error if progress is not None and progress.error else f"the trainer exited with code {code}"
            )
            error = f"{reason}\n{self.log} (last lines):\n{log_tail(self.log, self._log_offset)}"
        if progress is None:
            return RunResult(exit_code, outcome, error=error)
        summary = summarize(progress, self.plan.run_dir, outcome=outcome, wall_seconds=wall_seconds)
        write_summary(summary, self.plan.run_dir)
        plot_path: Optional[Path] = None
        if plot:
            try:
                plot_path = write_plot(summary, self.plan.run_dir / PLOT_FILE)
            except Exception as exc:  # a broken plot must not hide the result of a long run
                log.warning("could not write the plot: %s", exc)
        return RunResult(exit_code, outcome, summary=summary, table=summary_table(summary, plot_path), error=error)


class Supervisor:
    """Starts vLLM then the trainers (one job's, or a pool's jobs'), follows their progress, restarts a dead
    vLLM, turns Ctrl-C into a checkpointed stop of every trainer."""

    def __init__(
        self, server: VLLMServerSpec, log_dir: Path, plans: Sequence[Plan], display: Display, *, plot: bool = True
    ) -> None:
        self.display = display
        self.plot = plot
        self.vllm = LocalVLLM(
            server, log_dir / VLLM_LOG, start_timeout=VLLM_START_TIMEOUT, cwd=log_dir, env=plans[0].secret_env
        )
        self.trainers = [Trainer(plan, display) for plan in plans]
        self.started = False  # the trainers were started
        self.stop_requested = False
        self.vllm_restarts = 0
        self._killed = False

    # -- signals ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.stop_requested:
            self.display.message(f"second interrupt: killing the {self._trainers} and vLLM")
            for trainer in self.trainers:
                trainer.signal(signal.SIGKILL)
            self._killed = True
            raise _Killed()
        self.stop_requested = True
        if not self.started:
            raise _Interrupted()
        for trainer in self.trainers:
            trainer.signal(signal.SIGTERM)
        each = "each trainer finishes its step" if len(self.trainers) > 1 else "the trainer finishes its step"
        self.display.message(f"stopping: {each} and writes a checkpoint; rerun to resume (Ctrl-C again to kill)")

    @property
    def _trainers(self) -> str:
        return "trainers" if len(self.trainers) > 1 else "trainer"

    # -- children ----------------------------------------------------------------------

    def _restart_vllm(self, code: int) -> None:
        self.vllm_restarts += 1
        tail = log_tail(self.vllm.log_path)
        if self.vllm_restarts > MAX_VLLM_RESTARTS:
            raise RunFailed(
                f"vLLM exited with code {code} for the {self.vllm_restarts}th time; giving up. {self.vllm.log_path}:\n{tail}"
            )
        log.warning(
            "vLLM exited with code %s; restarting it with the same command (%d/%d); log %s",
            code,
            self.vllm_restarts,
            MAX_VLLM_RESTARTS,
            self.vllm.log_path,
        )
        self.vllm.stop(timeout=0)  # the engine core may outlive a crashed API server
        try:
            self.vllm.start()
        except VLLMStartError as exc:
            raise RunFailed(f"vLLM could not be restarted: {exc}") from None
        log.info("vLLM is serving again")

    def _shutdown(self) -> None:
        for trainer in self.trainers:
            trainer.stop()
        self.vllm.stop()

    def _kill_all(self) -> None:
        for trainer in self.trainers:
            trainer.kill()
        self.vllm.kill()

    def _supervise(self) -> None:
        """Until every trainer has exited (one that fails leaves the others running, as on a pool)."""
        while True:
            live = [t for t in self.trainers if t.proc is not None and t.poll() is None]
            if not live:
                return
            vllm_code = self.vllm.exited()
            if vllm_code is not None:
                self._restart_vllm(vllm_code)
            time.sleep(POLL_SECONDS)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> list[RunResult]:
        """Each trainer's result, in the order of the plans."""
        t0 = time.monotonic()
        become_subreaper()
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                for trainer in self.trainers:
                    checkpoint = latest_checkpoint(trainer.plan.run_dir)
                    if checkpoint is not None:
                        self.display.message(f"resuming {trainer.plan.run_dir} from the checkpoint of step {checkpoint}")
                self.vllm.start()
                self.started = True
                for trainer in self.trainers:
                    if not self.stop_requested:
                        trainer.start()
                self._supervise()
            finally:
                self._kill_all() if self._killed else self._shutdown()
        except _Interrupted:
            self._kill_all()
            return [RunResult(EXIT_OK, "stopped", error="stopped before training started") for _ in self.trainers]
        except _Killed:
            self._kill_all()
            return self._results(time.monotonic() - t0, killed=True)
        except VLLMStartError as exc:
            return [RunResult(EXIT_FAILED, "failed", error=f"vLLM failed to start: {exc}") for _ in self.trainers]
        except RunFailed as exc:
            return [RunResult(EXIT_FAILED, "failed", error=str(exc)) for _ in self.trainers]
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.display.close()
        return self._results(time.monotonic() - t0)

    def _results(self, wall_seconds: float, *, killed: bool = False) -> list[RunResult]:
        return [
            t.result(wall_seconds, stop_requested=self.stop_requested, killed=killed, plot=self.plot)
            for t in self.trainers
        ]


def run(options: RunOptions, display: Display) -> RunResult:
    """Validate, then run the job to its end (or a stop); raises InvalidInput before anything starts."""
    plan = make_plan(options)
    (result,) = _run_plans(plan.vllm, plan.run_dir / LOGS_DIR, (plan,), display, fresh=options.fresh, plot=options.plot)
    return result


def run_pool(pool_file: Path, jobs: tuple[RunOptions, ...], display: Display, *, port: int) -> list[RunResult]:
    """A GRPOInferencePool's server and the jobs on it, each to its end (or a stop): each job's result, in the
    order given. Raises InvalidInput before anything starts (:func:`grpo_operator.local.plan.make_pool_plan`)."""
    plan = make_pool_plan(pool_file, jobs, port=port)
    pool = plan.pool
    log.info("pool %s: %d jobs on one vLLM server (log %s)", pool.name, len(plan.jobs), pool.home / LOGS_DIR / VLLM_LOG)
    fresh = any(options.fresh for options in jobs)
    plot = all(options.plot for options in jobs)
    return _run_plans(pool.server, pool.home / LOGS_DIR, plan.jobs, display, fresh=fresh, plot=plot)


def _run_plans(
    server: VLLMServerSpec, log_dir: Path, plans: Sequence[Plan], display: Display, *, fresh: bool, plot: bool
) -> list[RunResult]:
    """Lock and prepare each run directory as a pod's init would, then run ``server`` and the trainers; export
    each finished job's result."""
    with ExitStack() as held:
        for plan in plans:
            held.callback(lock_run_dir(plan.run_dir, fresh).close)
        for plan in plans:
            check_run_dir_owner(plan)
        for plan in plans:
            write_config(plan)
            log.info("run directory %s", plan.run_dir)
        for plan in plans:
            failed = fetch_code(plan)
            if failed is not None:
                why = f"{plan.name}: {failed}" if len(plans) > 1 else failed
                return [RunResult(EXIT_INVALID, "failed", error=why) for _ in plans]
        results = Supervisor(server, log_dir, plans, display, plot=plot).run()
        for i, plan in enumerate(plans):
            if plan.export is not None and results[i].outcome == "finished":
                report, why = export_result(plan)
                results[i] = replace(results[i], export=report, export_error=why)
        return results


EXPORT_TIMEOUT = 3600.0  # a merge of a large model, an upload over a slow link
EXPORT_LOG = "export.log"


def export_result(plan: Plan) -> tuple[Optional[ExportReport], Optional[str]]:
    """What the operator's export pod does after Succeeded: the same command (grpo_operator.resolve),
    its credentials from this environment, claims as ``--volume`` directories. Returns its report, or
    why there is none."""
    assert plan.export is not None
    log_path = plan.run_dir / LOGS_DIR / EXPORT_LOG
    log.info("exporting the result to %s (log %s)", ", ".join(t.name for t in plan.export.plan.targets), log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "ab") as err:
            done = subprocess.run(
                plan.export.argv, env=dict(os.environ), stdout=subprocess.PIPE, stderr=err, timeout=EXPORT_TIMEOUT
            )
    except subprocess.TimeoutExpired:
        return None, f"the export took longer than {EXPORT_TIMEOUT:.0f} s; {log_path} says how far it got"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    report = ExportReport.parse(lines[-1]) if lines else None
    if report is None:
        return None, f"the export exited {done.returncode} without a report:\n{log_tail(log_path)}"
    return report, None


FETCH_TIMEOUT = 1800.0


def fetch_code(plan: Plan) -> Optional[str]:
    """What the pod's init containers do: fetch spec.code's git and pip sources (into the run directory).
    Returns why one failed, or None."""
    for fetch in plan.code_fetches:
        log.info("fetching spec.code[%d] into %s", fetch.index, fetch.dest)
        try:
            done = subprocess.run(
                fetch.argv, env=dict(os.environ), capture_output=True, text=True, timeout=FETCH_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return f"InvalidCode: fetching spec.code[{fetch.index}] took longer than {FETCH_TIMEOUT:.0f} s"
        if done.returncode != 0:
            return f"InvalidCode: fetching spec.code[{fetch.index}] failed: {done.stderr.strip()[-2000:]}"
    return None


CHECK_TIMEOUT = 600.0  # imports and a data read; a hub data set may download


@dataclass(frozen=True)
class CheckResult:
    exit_code: int  # EXIT_OK or EXIT_INVALID (EXIT_FAILED when the check itself could not run)
    report: str  # what the trainer found (JSON), or why the job is invalid


def check(options: RunOptions) -> CheckResult:
    """The job file's validation plus the trainer's own check of program, metric, data and code, with no
    model loaded and no vLLM started: what a pod would find in its first seconds. Raises InvalidInput."""
    plan = make_plan(options, ports=False)
    lock = lock_run_dir(plan.run_dir, options.fresh)
    try:
        check_run_dir_owner(plan)
        write_config(plan)
        failed = fetch_code(plan)
        if failed is not None:
            return CheckResult(EXIT_INVALID, failed)
        done = subprocess.run(
            [*plan.trainer_argv[:1], "-m", TRAINER_MODULE, "--config", str(plan.run_dir / CONFIG_FILE), "--check"]
            + ["--log-format", "text"],
            env={**os.environ, **plan.trainer_env, **plan.secret_env, "RANK": "0"},
            cwd=plan.run_dir,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
        )
    finally:
        lock.close()
    if done.returncode == exit_codes.DONE:
        return CheckResult(EXIT_OK, done.stdout.strip())
    if done.returncode == exit_codes.INVALID_JOB:
        return CheckResult(EXIT_INVALID, _last_error(done.stderr))
    return CheckResult(EXIT_FAILED, f"the check exited with code {done.returncode}:\n{done.stderr[-3000:]}")


def _last_error(stderr: str) -> str:
    """The trainer's "invalid job: ..." line (its log's last word on the matter)."""
    lines = [line for line in stderr.splitlines() if "invalid job:" in line]
    return lines[-1].split("invalid job:", 1)[1].strip() if lines else stderr.strip()[-2000:]
