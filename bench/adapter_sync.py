"""Adapter sync: save → vLLM runtime load → first served request, per LoRA rank and model size.

Runs the trainer's own path for every step: ``AdapterStore.save`` writes
``adapters/step-N`` atomically, ``VLLMAdapterSync.publish`` loads it into a real
vLLM (CPU build) as ``policy-vN``, verifies it with a first completion and unloads
the version before the previous one. The LoRA weights are perturbed before every
save, so each step is a new adapter that vLLM has never seen.

Two models, both generated with random weights (nothing is downloaded): the tiny
test model, and the largest Llama shape that fits this machine comfortably — a
vLLM fp32 copy plus a trainer fp32 copy (with LoRA activations and optimizer
state) next to the other sessions' vLLM servers in 24 GiB, and still a usable
sampling speed on 2 cores.

One vLLM server per (model, rank), configured as the operator configures a job's
inference pod (``--max-lora-rank`` = the smallest allowed value >= the rank, since
vLLM's LoRA buffers and kernels are sized by it, not by the adapter), and stopped
before the next one starts.

    bash bench/run.sh adapter_sync            # both models, ranks 8 16 64, 10 repeats
    bash bench/run.sh adapter_sync --quick    # tiny model, rank 8, 3 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from _results import header, percentile, write_section

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.contract.vllm_command import lora_rank_flag
from grpo_trainer.embedded.tinymodel import TinyModelSpec, ensure_tiny_model
from grpo_trainer.grpo.policy import Policy, load_policy
from grpo_trainer.vllm.adapters import AdapterStore, VLLMAdapterSync
from support.vllm import VLLMServer, start_vllm_server

NAME = "adapter_sync"
MB = 1e6


@dataclass(frozen=True)
class ModelChoice:
    label: str
    params: dict[str, int] = field(default_factory=dict)  # TinyModelSpec fields; {} is the tiny test model

    def spec(self) -> TinyModelSpec:
        return TinyModelSpec(**self.params)


TINY = ModelChoice("tiny")
# ~0.6 B parameters, Qwen2.5-1.5B's hidden size at 24 layers: 2.4 GB per fp32 copy, so
# vLLM + trainer stay under ~8 GiB with room for the other sessions on the machine.
LARGE = ModelChoice("large", dict(layers=24, hidden=1536, heads=24, kv_heads=4, intermediate=4096))


@dataclass
class Sample:
    save: float
    load: float
    first_request: float
    total: float
    size_mb: float
    base_request: float  # the same completion on the base model just before: the inference floor under current load


@dataclass
class RankResult:
    rank: int
    server_flags: str
    start_seconds: float  # vLLM start-up, for scale
    cold: Sample  # the first publish on the fresh server, not in the percentiles
    samples: list[Sample]


@dataclass
class ModelRun:
    choice: ModelChoice
    params: int
    ranks: list[RankResult]


def perturb(policy: Policy, generator: torch.Generator, scale: float = 0.02) -> None:
    """Add noise to every LoRA weight: the next save is an adapter vLLM has not seen."""
    with torch.no_grad():
        for _name, param in policy.named_trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def dir_size_mb(path: Path) -> float:
    return sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file()) / MB


def base_request_seconds(server: VLLMServer, sync: VLLMAdapterSync) -> float:
    """The publish's verification request, on the base model."""
    body = {"model": server.served_name, "prompt": sync.verify_prompt, "max_tokens": 1, "temperature": 0.0}
    start = time.perf_counter()
    httpx.post(f"{server.openai_url}/completions", json=body, timeout=120).raise_for_status()
    return time.perf_counter() - start


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            total += sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())
    return total


@contextlib.contextmanager
def vllm_server(model_dir: Path, log_dir: Path, lora_rank: int, max_loras: int) -> Iterator[VLLMServer]:
    yield from start_vllm_server(model_dir, log_dir, lora_rank=lora_rank, max_loras=max_loras, start_timeout=600)


def measure_rank(model_dir: Path, rank: int, repeats: int, run_dir: Path, max_loras: int) -> RankResult:
    """A trainer policy of ``rank`` and its own vLLM server; 1 cold + ``repeats`` save/publish cycles."""
    train = TrainKwargs(lora_config={"r": rank, "lora_alpha": 2 * rank})
    # Before vLLM starts: the server runs only while measuring.
    policy = load_policy(str(model_dir), train, device="cpu")
    generator = torch.Generator().manual_seed(rank)
    store = AdapterStore(run_dir, base_model_name=str(model_dir))
    started = time.perf_counter()
    with vllm_server(model_dir, run_dir, lora_rank=rank, max_loras=max_loras) as server:
        start_seconds = time.perf_counter() - started
        flags = f"--max-lora-rank {lora_rank_flag(server.lora_rank)} --max-loras {server.max_loras}"
        samples: list[Sample] = []
        with VLLMAdapterSync(server.openai_url, str(store.root), max_loras=max_loras, wait_timeout_seconds=300) as sync:
            base_request_seconds(server, sync)  # warm-up: the server's first request ever
            for step in range(1, repeats + 2):
                perturb(policy, generator)
                base = base_request_seconds(server, sync)  # paired with this step: the machine's load drifts
                start = time.perf_counter()
                saved = store.save(policy, step)
                published = sync.publish(step, reload=saved.replaced)
                total = time.perf_counter() - start
                assert not published.already_loaded, f"step {step} was not a new adapter"
                size = dir_size_mb(saved.path)
                first = published.first_request_seconds
                samples.append(Sample(saved.seconds, published.load_seconds, first, total, size, base))
                store.prune(keep_last=2, protect=sync.wanted())
    return RankResult(rank, flags, start_seconds, samples[0], samples[1:])


def run_model(choice: ModelChoice, ranks: list[int], repeats: int, work: Path, max_loras: int) -> ModelRun:
    model_dir = ensure_tiny_model(**choice.params)
    params = parameter_count(model_dir)
    log(f"[{choice.label}] {model_dir} ({params / 1e6:.0f} M parameters)")
    results = []
    for rank in ranks:  # one vLLM server at a time
        result = measure_rank(model_dir, rank, repeats, work / f"{choice.label}-r{rank}", max_loras)
        totals = [s.total for s in result.samples]
        log(
            f"[{choice.label}] rank {rank} ({result.server_flags}, up in {result.start_seconds:.0f} s): "
            f"total p50 {percentile(totals, 50):.3f} s, cold {result.cold.total:.3f} s"
        )
        results.append(result)
    return ModelRun(choice, params, results)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(runs: list[ModelRun]) -> str:
    def pp(values: list[float]) -> str:
        return f"{percentile(values, 50):.3f} / {percentile(values, 95):.3f}"

    lines = [
        "| model | rank | adapter MB | save s | load s | first request s | total s | cold total s "
        "| base request s | first request − base s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for r in run.ranks:
            s = r.samples
            lines.append(
                f"| {run.choice.label} | {r.rank} | {percentile([x.size_mb for x in s], 50):.1f} "
                f"| {pp([x.save for x in s])} | {pp([x.load for x in s])} | {pp([x.first_request for x in s])} "
                f"| {pp([x.total for x in s])} | {r.cold.total:.3f} | {pp([x.base_request for x in s])} "
                f"| {pp([x.first_request - x.base_request for x in s])} |"
            )
    return "\n".join(lines)


def describe(runs: list[ModelRun], repeats: int) -> str:
    out = []
    for run in runs:
        spec = run.choice.spec()
        servers = "; ".join(f"r{r.rank}: `{r.server_flags}`, up in {r.start_seconds:.0f} s" for r in run.ranks)
        out.append(
            f"- **{run.choice.label}**: {run.params / 1e6:.1f} M parameters (Llama shape: {spec.layers} layers, hidden "
            f"{spec.hidden}, {spec.heads} heads / {spec.kv_heads} KV, intermediate {spec.intermediate}, vocab "
            f"{spec.vocab_size}; random weights), fp32. vLLM servers: {servers}."
        )
    out.append(
        f"- Cells are p50 / p95 over {repeats} repeats per rank, each a new adapter (LoRA weights perturbed before "
        "every save). One vLLM server per (model, rank), flags as the operator sets them for that rank. LoRA on all 7 "
        "projections (the trainer's default target_modules), alpha = 2r. save = `AdapterStore.save` (safetensors, "
        "fsync, atomic rename); load = `POST /v1/load_lora_adapter` and the check that `/v1/models` lists it; first "
        "request = a 1-token completion on the new adapter; total = save + `VLLMAdapterSync.publish`, as the trainer "
        "calls them (includes unloading the version before the previous one); cold = the first publish on a fresh "
        "server (not in the percentiles); base request = the same completion on the base model right before each "
        "publish (the inference floor under the load of that moment), and first request − base its paired "
        "difference: the cost of a new adapter's first use. MB = 10^6 bytes on disk."
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, rank 8, 3 repeats")
    parser.add_argument("--repeats", type=int, help="repeats per rank (default 10, --quick 3)")
    parser.add_argument("--ranks", type=int, nargs="+", help="LoRA ranks (default 8 16 64, --quick 8)")
    parser.add_argument("--models", nargs="+", choices=[TINY.label, LARGE.label], help="default both, --quick tiny")
    parser.add_argument("--max-loras", type=int, default=4, help="vLLM --max-loras (the trainer's default)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave bench/RESULTS.md alone")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 10)
    ranks = args.ranks or ([8] if args.quick else [8, 16, 64])
    labels = args.models or ([TINY.label] if args.quick else [TINY.label, LARGE.label])
    choices = [c for c in (TINY, LARGE) if c.label in labels]

    load = os.getloadavg()[0]
    runs: list[ModelRun] = []
    with tempfile.TemporaryDirectory(prefix="adapter-sync-") as work:
        for choice in choices:  # one vLLM server at a time
            runs.append(run_model(choice, ranks, repeats, Path(work), args.max_loras))

    body = "\n".join(
        [
            "## Adapter sync: save → vLLM load → first request",
            "",
            header(NAME) + f"Load average (1 min, other sessions share the machine): {load:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at end",
            "",
            table(runs),
            "",
            describe(runs, repeats),
        ]
    )
    print(body)
    if not args.no_write:
        write_section(NAME, body)


if __name__ == "__main__":
    main()
