"""Where the seed's training step spends its time on a GPU:  bash bench/run.sh gpu_profile [--device cpu]

The GPU check (bench/gpu_check.py) measured the trainer's update at the seed's shape on an
H200 at 3.9 % MFU: 2.26 s per optimizer step of 32 sequences of about 725 tokens, where the
matrix work alone would take about a tenth of that. This runs the same update (the same
random-weight Qwen2.5-1.5B-shape model, synthetic samples and the seed's train_kwargs)
under variants that each change one thing, and one seed step under torch.profiler:

- ``seed``: as the GPU check (sdpa attention, gradient checkpointing, LoRA dropout 0.05,
  8 sequences × 4 accumulated);
- ``no checkpointing``: gradient_checkpointing off;
- ``lora dropout 0``: PEFT then skips the dropout copy of each projection's input;
- ``eager attention``: transformers' eager attention instead of sdpa;
- ``1 × 32``: one micro-batch of 32 sequences instead of 8 × 4;
- all three of the cheap ones together.

Per variant: seconds per optimizer step (median), its forward+backward and optimizer
parts, MFU (the GPU check's FLOP count) and peak memory. The profile gives the share of
the step's wall time the GPU was busy (kernel time / wall: well below 1 means the GPU
waits on the host), the kernel launches per step, and the ops with the most device time.
Writes the ``gpu_profile`` section of bench/RESULTS.md on a GPU (``--no-write`` skips);
``--device cpu`` runs the tiny smoke model (step times only).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _results import header, write_section
from gpu_check import (
    LENGTHS,
    PEAK_BF16_DENSE,
    SEED_TRAIN,
    ParamCounts,
    build_base,
    count_base,
    flops,
    parse_target,
    release,
    sync,
    synthetic_samples,
    with_sampler_logprobs,
)
from torch.profiler import ProfilerActivity, profile
from transformers import PreTrainedModel

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.optim import build_optimizer, build_scheduler
from grpo_trainer.grpo.policy import Policy, wrap_policy
from grpo_trainer.grpo.samples import TrainSample
from grpo_trainer.grpo.update import optimizer_batches, train_on_samples
from grpo_trainer.run.distributed import DistContext

NAME = "gpu_profile"
TOP_OPS = 12


@dataclass(frozen=True)
class Variant:
    label: str
    train: TrainKwargs
    prepare: Callable[[PreTrainedModel], None] = lambda _base: None  # on the bare base, before wrap_policy


def variants() -> list[Variant]:
    lora = SEED_TRAIN.lora_config
    return [
        Variant("seed", SEED_TRAIN),
        Variant("no checkpointing", SEED_TRAIN.model_copy(update={"gradient_checkpointing": False})),
        Variant(
            "lora dropout 0",
            SEED_TRAIN.model_copy(update={"lora_config": lora.model_copy(update={"lora_dropout": 0.0})}),
        ),
        Variant("eager attention", SEED_TRAIN, lambda base: base.set_attn_implementation("eager")),
        Variant(
            "1 × 32",
            SEED_TRAIN.model_copy(update={"per_device_train_batch_size": 32, "gradient_accumulation_steps": 1}),
        ),
        Variant(
            "all three: no checkpointing, dropout 0, 1 × 32",
            SEED_TRAIN.model_copy(update={
                "gradient_checkpointing": False, "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1,
                "lora_config": lora.model_copy(update={"lora_dropout": 0.0}),
            }),
        ),
    ]


@dataclass
class Timing:
    label: str
    seconds: float  # median per optimizer step
    forward_backward: float
    optimizer: float
    mfu: str
    memory: str


def make_policy(
    shape: dict[str, object], device: torch.device, dtype: torch.dtype, variant: Variant
) -> tuple[Policy, ParamCounts]:
    torch.manual_seed(0)
    base = build_base(shape, device, dtype)
    variant.prepare(base)
    counts = count_base(base)
    policy = wrap_policy(base, variant.train, device)
    lora = sum(p.numel() for p in policy.trainable_parameters())
    return policy, ParamCounts(counts.total, counts.layers, counts.head, lora)


def time_variant(
    policy: Policy,
    counts: ParamCounts,
    samples: list[TrainSample],
    shape: dict[str, object],
    variant: Variant,
    steps: int,
) -> Timing:
    device = policy.device
    train = variant.train
    optimizer = build_optimizer(policy.trainable_parameters(), train)
    scheduler = build_scheduler(optimizer, train)
    dist = DistContext(device=device)
    batches = optimizer_batches(samples, train, 1)
    train_on_samples(policy, optimizer, scheduler, batches[0], train, dist)  # warm-up: allocator, kernels
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, fb, opt, done = [], [], [], []
    for batch in batches[1 : 1 + steps]:
        sync(device)
        started = time.perf_counter()
        stats = train_on_samples(policy, optimizer, scheduler, batch, train, dist)
        sync(device)
        seconds.append(time.perf_counter() - started)
        fb.append(stats.forward_backward_seconds)
        opt.append(stats.optimizer_seconds)
        done += batch
    mfu = memory = "n/a (cpu)"
    if device.type == "cuda":
        peak = next((v for key, v in PEAK_BF16_DENSE.items() if key in torch.cuda.get_device_name(device)), None)
        model_flops, _ = flops(done, counts, int(shape["num_hidden_layers"]), int(shape["hidden_size"]))
        rate = model_flops / sum(seconds)
        mfu = f"{rate / peak:.1%}" if peak else f"{rate / 1e12:.1f} TFLOP/s"
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    return Timing(variant.label, statistics.median(seconds), statistics.median(fb), statistics.median(opt), mfu, memory)


def _is_kernel(event: object) -> bool:
    return str(getattr(event, "device_type", "")).endswith("CUDA")


def profiled_step(policy: Policy, samples: list[TrainSample], train: TrainKwargs) -> tuple[list[str], str]:
    """One optimizer step under torch.profiler: summary lines, and the top kernels and host ops as tables."""
    device = policy.device
    optimizer = build_optimizer(policy.trainable_parameters(), train)
    scheduler = build_scheduler(optimizer, train)
    dist = DistContext(device=device)
    batch = optimizer_batches(samples, train, 1)[0]
    train_on_samples(policy, optimizer, scheduler, batch, train, dist)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        sync(device)
        started = time.perf_counter()
        train_on_samples(policy, optimizer, scheduler, batch, train, dist)
        sync(device)
        wall = time.perf_counter() - started
    events = prof.events()
    kernels: dict[str, list[float]] = {}
    for e in events:
        if _is_kernel(e):
            kernels.setdefault(e.name, []).append(e.time_range.elapsed_us())
    busy_us = sum(sum(v) for v in kernels.values())
    launches = sum(len(v) for v in kernels.values())
    lines = [f"profiled step: {wall:.3f} s wall (profiler on)"]
    if device.type == "cuda":
        lines.append(f"GPU busy (sum of kernel times / wall): {busy_us / 1e6:.3f} s = {busy_us / 1e6 / wall:.0%}")
        lines.append(f"kernel launches in the step: {launches:,} (mean kernel {busy_us / max(launches, 1):.1f} µs)")
    rows = ["| kernel | launches | device ms |", "| --- | ---: | ---: |"]
    for name, times in sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:TOP_OPS]:
        rows.append(f"| `{name[:90]}` | {len(times)} | {sum(times) / 1e3:.1f} |")
    host = sorted((e for e in prof.key_averages() if not _is_kernel(e)), key=lambda e: -e.self_cpu_time_total)
    rows += ["", "| host op | calls | host ms (self) |", "| --- | ---: | ---: |"]
    for e in host[:TOP_OPS]:
        rows.append(f"| `{e.key[:90]}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} |")
    return lines, "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant, after one warm-up")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    if (parsed := parse_target(parser, NAME)) is None:
        return 2
    args, target = parsed
    device, shape, dtype, cuda = target.device, target.shape, target.dtype, target.cuda
    started = time.perf_counter()
    per_step = SEED_TRAIN.per_device_train_batch_size * SEED_TRAIN.gradient_accumulation_steps
    samples: list[TrainSample] = []
    timings: list[Timing] = []
    profile_lines: list[str] = []
    top = ""
    for variant in variants():
        policy, counts = make_policy(shape, device, dtype, variant)
        if not samples:  # the same samples for every variant, sampler logprobs from the seed's policy
            raw = synthetic_samples(per_step * (1 + args.steps), int(shape["vocab_size"]), LENGTHS[device.type],
                                    random.Random(0), SEED_TRAIN.scale_rewards)
            samples = with_sampler_logprobs(policy, raw, torch.Generator().manual_seed(2))
        timings.append(time_variant(policy, counts, samples, shape, variant, args.steps))
        print(f"  {timings[-1]}", flush=True)
        if variant.label == "seed":
            profile_lines, top = profiled_step(policy, samples, variant.train)
        del policy
        release(device)

    seed = timings[0].seconds
    table = [
        "| variant | s / optimizer step | vs seed | forward+backward s | optimizer s | MFU | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in timings:
        table.append(f"| {t.label} | {t.seconds:.3f} | {t.seconds / seed:.2f}× | {t.forward_backward:.3f} | "
                     f"{t.optimizer:.3f} | {t.mfu} | {t.memory} |")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    body = "\n".join([
        f"Device: {name}; torch {torch.__version__}; {args.steps} timed steps per variant after one warm-up; "
        f"32 sequences per step, mean {statistics.fmean(s.length for s in samples):.0f} tokens; "
        f"wall {time.perf_counter() - started:.0f} s.",
        "",
        *table,
        "",
        *(f"- {line}" for line in profile_lines),
        "",
        "Kernels with the most device time, and host ops with the most own time, in the profiled seed step:",
        "",
        top,
    ])
    print(body)
    if cuda and not args.no_write:
        write_section(NAME, f"## Where the seed's step spends its time on a GPU\n\n{header(NAME)}\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
