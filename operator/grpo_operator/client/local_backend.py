"""compile() on this machine: grpo-local runs the job, then a vLLM server here serves its result.

The job file is the submission's YAML (the GRPOJob followed by its code and data
ConfigMaps, which grpo-local reads from the file), written into ``workdir`` beside
the run directory; the keys a cluster job reads from its Secret are put in this
process's environment for the run, as grpo-local expects them. A run directory
that already holds the finished run is not run again; an interrupted one resumes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from pydantic.alias_generators import to_camel

from grpo_operator.client.errors import JobFailed, JobRejected, NotServed
from grpo_operator.client.served import ServedFormat, ServedResult
from grpo_operator.client.submission import Submission
from grpo_operator.local.display import Display, DisplayLogHandler, make_display
from grpo_operator.local.plan import InvalidInput, RunOptions, make_plan
from grpo_operator.local.processes import LocalVLLM
from grpo_operator.local.rundir import LOGS_DIR, read_progress
from grpo_operator.local.runner import EXIT_INVALID, run
from grpo_operator.resolve import serving_result
from grpo_trainer.contract.config import VLLM_API_KEY_ENV
from grpo_trainer.contract.progress import RESULT_DIR, result_model_name
from grpo_trainer.contract.vllm_command import GUARD_FILE
from grpo_trainer.run.atomic import write_bytes_atomic
from grpo_trainer.vllm.process import VLLMStartError

log = logging.getLogger(__name__)

SERVE_LOG = "serve-vllm.log"
SERVE_START_TIMEOUT = 900.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block (grpo-local reads a job's Secret keys from it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@dataclass
class LocalBackend:
    """Run compile()'s job with grpo-local on this machine (vLLM's CPU build when there is no GPU).

    Args:
        workdir: where job files and run directories go (``<workdir>/<job>.yaml``, ``<workdir>/<job>/``).
        fresh: start over instead of resuming or reusing a run of the same name.
        display: the progress display (default: a tqdm bar in a notebook or terminal, lines in a log).
    """

    workdir: Path = Path("runs")
    fresh: bool = False
    display: Optional[Display] = None

    def spec_overrides(self) -> Mapping[str, Any]:
        return {}

    def paths(self, name: str) -> tuple[Path, Path]:
        root = Path(self.workdir).expanduser().resolve()
        return root / f"{name}.yaml", root / name

    def run(self, submission: Submission) -> ServedResult:
        job_file, run_dir = self.paths(submission.name)
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(submission.yaml(), encoding="utf-8")
        options = RunOptions(job_file=job_file, run_dir=run_dir, port=free_port(), trainer_port=0, fresh=self.fresh)
        with _environment(submission.local_env()):
            done = read_progress(run_dir) if not self.fresh else None
            if done is not None and done.finished and done.error is None and (run_dir / RESULT_DIR).is_dir():
                log.info("job %s already finished in %s: using its result", submission.name, run_dir)
            else:
                self._train(submission.name, options)
            return serve(submission.name, options, submission.student.trained)

    def _train(self, name: str, options: RunOptions) -> None:
        display = self.display or make_display(sys.stderr)
        handler = DisplayLogHandler(display)
        root = logging.getLogger("grpo_operator")
        root.addHandler(handler)
        try:
            result = run(options, display)
        except InvalidInput as exc:
            raise JobRejected(str(exc)) from None
        finally:
            root.removeHandler(handler)
        if result.exit_code == EXIT_INVALID:
            reason, _, message = (result.error or "InvalidJob: ").partition(": ")
            raise JobFailed(name, reason or "InvalidJob", message)
        if result.outcome == "stopped":
            raise JobFailed(
                name, "Stopped", f"{result.error or 'stopped'}; run compile() again to resume from the last checkpoint"
            )
        if result.outcome != "finished":
            raise JobFailed(name, "TrainerFailed", result.error or f"the run ended {result.outcome}")
        if result.table:
            display.message(result.table)


def serve(name: str, options: RunOptions, trained: tuple[str, ...] | list[str]) -> ServedResult:
    """Start a vLLM server here on a finished run's result (the best adapter under the job's name)."""
    plan = make_plan(replace(options, port=free_port()), ports=False)
    progress = read_progress(plan.run_dir)
    if progress is None or progress.result is None:
        raise NotServed(f"{plan.run_dir} holds no result of job {name}: it has not finished")
    adapter = progress.result.adapter is not None
    spec = plan.vllm
    if adapter:
        spec = serving_result(spec, name, str(plan.run_dir))
    for file, data in plan.job_files.items():  # the key guard, as the run had it (a run of an older version had none)
        if file.name == GUARD_FILE and not file.is_file():
            file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(file, data)  # as the run wrote it (local.rundir.write_config)
    # A key of its own, as a run's server has: given to this process's LM, never written down.
    server = LocalVLLM(
        spec, plan.run_dir / LOGS_DIR / SERVE_LOG, start_timeout=SERVE_START_TIMEOUT, env=plan.secret_env
    )
    try:
        server.start()
    except VLLMStartError as exc:
        raise NotServed(f"the server for job {name}'s result did not start: {exc}") from None
    atexit.register(server.stop)
    return ServedResult(
        job=name,
        namespace=None,
        result={to_camel(k): v for k, v in progress.result.model_dump(mode="json").items()},  # as status.result
        url=server.openai_base_url,
        model=result_model_name(name) if adapter else spec.served_model_name,
        base_model=spec.served_model_name,
        api_key=plan.secret_env[VLLM_API_KEY_ENV],
        trained=tuple(trained),
        format=ServedFormat.of(plan.config.grpo, plan.config.train),
        close=server.stop,
    )
