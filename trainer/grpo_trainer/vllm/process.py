"""A vLLM server as a child process, for the local runner, tests and benchmarks.

Starts the command of :func:`grpo_trainer.contract.vllm_command.vllm_command` and
waits until it serves; it never reads the GRPOJob.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Mapping, Optional

from grpo_trainer.contract.vllm_command import VLLMServerSpec, vllm_command

logger = logging.getLogger(__name__)


class VLLMStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message ends with its log tail."""


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class VLLMProcess:
    """A vLLM server as a child process (local runner, tests); ``with`` starts and stops it.

    The child runs in its own process group so stopping it also stops vLLM's
    engine-core subprocess.
    """

    def __init__(
        self,
        spec: VLLMServerSpec,
        log_path: str | Path,
        *,
        start_timeout: float = 180.0,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: variables the server needs beyond this process's environment and the command's (its key)."""
        self.spec = spec
        self.env = dict(env or {})
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        # vLLM writes scratch files (e.g. its usage stats) into its working directory.
        self.cwd = Path(cwd) if cwd is not None else self.log_path.parent
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.spec.host in ("0.0.0.0", "") else self.spec.host
        return f"http://{host}:{self.spec.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def start(self) -> "VLLMProcess":
        cmd = vllm_command(self.spec)
        env = {**os.environ, **cmd.env, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        logger.info("starting vLLM", extra={"argv": cmd.argv, "log": str(self.log_path)})
        self.proc = subprocess.Popen(
            cmd.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd, start_new_session=True
        )
        log.close()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise VLLMStartError(
                    f"vLLM exited with code {code} before serving; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    logger.info("vLLM healthy", extra={"url": self.base_url})
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise VLLMStartError(
                    f"vLLM not healthy after {self.start_timeout:.0f} s; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "VLLMProcess":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def current_python() -> str:
    """The interpreter of this process (its venv has vLLM when the trainer's does)."""
    return sys.executable
