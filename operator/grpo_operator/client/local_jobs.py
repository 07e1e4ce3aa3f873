"""grpo-local's runs under a folder, seen as jobs: what ``grpo status|logs|wait|stop|result --local`` read.

A run directory is ``<workdir>/<name>/`` (grpo-local's ``runs/<name>`` by default); its
trainer's progress document says where the run is, the runner's lock whether it is
running, and the pid in that lock which process to ask to stop (SIGINT: the same
checkpointed stop as Ctrl-C).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from grpo_operator.client.errors import GRPOError
from grpo_operator.client.job_view import JobView, poll_view
from grpo_operator.local.rundir import LOCK_FILE, LOGS_DIR, read_progress
from grpo_operator.local.runner import TRAINER_LOG
from grpo_trainer.contract.progress import Progress

POLL_SECONDS = 1.0


def runner_pid(run_dir: Path) -> Optional[int]:
    """The pid of the grpo-local that holds the run directory's lock; None when no runner holds it."""
    path = run_dir / LOCK_FILE
    try:
        with open(path, "r+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = fh.read().strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None
    except FileNotFoundError:
        return None


def _state(progress: Optional[Progress], running: bool) -> tuple[str, str, str]:
    if progress is None:
        return (
            ("Training", "Starting", "the run is starting") if running else ("Pending", "NoProgress", "no progress yet")
        )
    if progress.error:
        return "Failed", progress.error_reason or "TrainerFailed", progress.error
    if progress.finished:
        return "Succeeded", "TrainerSucceeded", f"completed (best validation score {progress.best_val_score})"
    if running:
        return "Training", "Running", f"step {progress.step}/{progress.max_steps}"
    return "Suspended", "Stopped", f"stopped at step {progress.step}; run it again to resume"


class LocalJobs:
    """The runs under ``workdir``."""

    def __init__(self, workdir: Path = Path("runs")) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        self.namespace = None

    def run_dir(self, name: str) -> Path:
        path = self.workdir / name
        if not path.is_dir():
            raise GRPOError(f"no local run {name}: {path} does not exist (grpo-local --run-dir names another)")
        return path

    def view(self, name: str) -> JobView:
        run_dir = self.run_dir(name)
        progress = read_progress(run_dir)
        state, reason, message = _state(progress, runner_pid(run_dir) is not None)
        result = progress.result.model_dump(mode="json") if progress is not None and progress.result else None
        return JobView(
            name=name,
            namespace=None,
            state=state,
            reason=reason,
            message=message,
            step=progress.step if progress else 0,
            max_steps=progress.max_steps if progress else None,
            train_reward=progress.reward_mean if progress else None,
            val_score=progress.val_score if progress else None,
            best_val_score=progress.best_val_score if progress else None,
            baseline_val_score=progress.baseline_val_score if progress else None,
            result=result,
            endpoint=None,
            trainer_pod=None,
            inference_pod=None,
        )

    def list(self) -> list[JobView]:
        if not self.workdir.is_dir():
            return []
        return [self.view(p.name) for p in sorted(self.workdir.iterdir()) if p.is_dir() and (p / LOGS_DIR).is_dir()]

    def wait(
        self,
        name: str,
        *,
        until: Callable[[JobView], bool] = lambda v: v.finished,
        on_view: Optional[Callable[[JobView], None]] = None,
        timeout: Optional[float] = None,
        poll: float = POLL_SECONDS,
    ) -> JobView:
        """Poll the run until ``until`` holds (default: finished), or it is suspended or not started."""
        return poll_view(
            lambda: self.view(name),
            lambda v: until(v) or v.state in ("Suspended", "Pending"),
            on_view=on_view,
            timeout=timeout,
            poll=poll,
            what=f"run {name}",
        )

    def stop(self, name: str) -> None:
        pid = runner_pid(self.run_dir(name))
        if pid is None:
            raise GRPOError(f"run {name} is not running")
        os.kill(pid, signal.SIGINT)  # the runner's Ctrl-C: the trainer finishes its step and checkpoints

    def logs(self, name: str, *, follow: bool = False, tail: Optional[int] = None) -> Iterator[str]:
        run_dir = self.run_dir(name)
        path = run_dir / LOGS_DIR / TRAINER_LOG
        with open(path, encoding="utf-8", errors="replace") if path.exists() else open(os.devnull) as fh:
            lines = fh.read().splitlines()
            yield from lines[-tail:] if tail is not None else lines
            while follow:
                line = fh.readline()
                if line:
                    yield line.rstrip("\n")
                    continue
                if runner_pid(run_dir) is None:
                    return
                time.sleep(POLL_SECONDS)

    def export(self, name: str, entry: dict[str, Any], *, job_file: Optional[Path] = None,
               volumes: Optional[dict[str, Path]] = None) -> Any:
        """Export the finished run's result now, as the operator's export pod would: the job file (``--job``, or
        the ``<workdir>/<name>.yaml`` compile() wrote) with ``entry`` added to its spec.export. Returns the
        export's report."""
        import yaml

        from grpo_operator.client.export_target import with_destination
        from grpo_operator.local.plan import InvalidInput, RunOptions, make_plan
        from grpo_operator.local.runner import export_result

        run_dir = self.run_dir(name)
        source = job_file or self.workdir / f"{name}.yaml"
        if not source.is_file():
            raise GRPOError(f"no job file for run {name}: pass --job FILE (the job it ran)")
        view = self.view(name)
        if view.state != "Succeeded":
            raise GRPOError(f"run {name} is {view.state}: only a finished run's result is exported")
        docs = [d for d in yaml.safe_load_all(source.read_text(encoding="utf-8")) if d]
        for doc in docs:
            if doc.get("kind") == "GRPOJob":
                spec = doc.setdefault("spec", {})
                spec["export"] = with_destination(spec.get("export"), entry)
        edited = run_dir / f"export-{source.name}"
        edited.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
        try:
            plan = make_plan(RunOptions(job_file=edited, run_dir=run_dir, volumes=volumes or {}), ports=False)
        except InvalidInput as exc:
            raise GRPOError(str(exc)) from None
        report, why = export_result(plan)
        if report is None:
            raise GRPOError(f"the export of run {name} failed: {why}")
        return report

    def result(self, name: str) -> dict[str, Any]:
        view = self.view(name)
        return {"result": view.result, "path": str(self.run_dir(name))}
