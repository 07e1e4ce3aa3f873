"""Trainer step: where a GRPO step's time goes, sequential vs overlapped, and our update against TRL's.

Part 1 runs the real trainer (``GRPORun``, in this process) on the tiny test model
against a real vLLM (CPU build): PAPILLON with the offline metric, the seed's step
shape scaled down (4 examples × 4 samples instead of 4 × 8; its train_kwargs:
8 sequences per micro-batch, 4 accumulated, gradient checkpointing, dapo).
The trainer's own phase timings (the ones progress.json shows) are collected per
step, first with ``grpo.overlap_rollouts: false`` then ``true``, alternating over
rounds; medians leave out each run's first step (warm-up).

Part 2 (vLLM stopped, so nothing else spins on the cores) replays the batches the
sequential run trained on through two optimisers on the same model, the same LoRA
weights, the same samples and the same loss (dapo, truncated IS against the
sampler's logprobs, cap 2): ours (``train_on_samples``) and TRL's GRPOTrainer
(its ``_get_per_token_logps_and_entropies`` for the old logprobs it always takes
with vLLM IS correction, its ``_compute_loss`` + backward per micro-batch, then
clipping and the AdamW step its Trainer does). Generation, rewards and advantages
are identical inputs and not timed there.

    bash bench/run.sh trainer_step            # 1 run × 5 steps per mode, 3 replay passes
    bash bench/run.sh trainer_step --quick    # 1 run × 3 steps per mode, 1 replay pass
    bash bench/run.sh trainer_step --rounds 2 # more runs per mode, alternating (steadier medians)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from _results import header, write_section

from grpo_trainer.contract.config import TrainerConfig
from grpo_trainer.contract.hparams import GRPOArgs, TrainKwargs
from grpo_trainer.contract.progress import Progress
from grpo_trainer.dspy.task import Task
from grpo_trainer.embedded.tinymodel import ensure_tiny_model
from grpo_trainer.grpo.loss import importance_weights
from grpo_trainer.grpo.optim import build_optimizer, build_scheduler
from grpo_trainer.grpo.policy import load_policy, peft_lora_config
from grpo_trainer.grpo.samples import TrainSample
from grpo_trainer.grpo.update import micro_batches, optimizer_batches, train_on_samples
from grpo_trainer.run.distributed import DistContext
from grpo_trainer.run.loop import GRPORun, Sampling, StepPlan
from grpo_trainer.run.stopflag import StopFlag
from grpo_trainer.vllm.adapters import version_step
from support.trl_reference import trl_layout
from support.vllm import VLLMServer, start_vllm_server, trainer_config_for

NAME = "trainer_step"
EXAMPLES, SAMPLES_PER_INPUT = 4, 4
TRAIN = TrainKwargs(
    per_device_train_batch_size=8,
    gradient_accumulation_steps=4,
    gradient_checkpointing=True,
    learning_rate=5e-3,  # the seed's 1e-6 would leave the tiny model's adapters (and so the off-policy lag) invisible
    lr_scheduler_type="constant_with_warmup",
    loss_type="dapo",
    scale_rewards=False,
    max_completion_length=128,
    max_steps=1000,
    num_training_gpus=0,
    num_inference_gpus=0,
)
# The trainer's phases, in step order; the update's parts are forward_backward + optimizer.
PHASES = ("rollout", "reward", "rollout_wait", "forward_backward", "optimizer", "train", "save", "load", "first_request", "step")


# -- part 1: the real trainer, per phase ------------------------------------------------------


@dataclass
class PhaseLog:
    """A progress observer: every timed phase's durations and the tokens trained per step."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tokens: list[int] = field(default_factory=list)
    _step: int = 0
    _tokens_total: int = 0

    def on_progress(self, progress: Progress) -> None:
        if progress.step != self._step:
            self._step = progress.step
            self.tokens.append(progress.tokens_trained - self._tokens_total)
            self._tokens_total = progress.tokens_trained

    def on_phase_seconds(self, phase: str, seconds: float) -> None:
        self.seconds[phase].append(seconds)


class BenchRun(GRPORun):
    """The trainer, reporting its phases to a PhaseLog and keeping the batches it trained on."""

    def __init__(self, cfg: TrainerConfig, phases: PhaseLog) -> None:
        super().__init__(cfg, DistContext(), StopFlag())
        self.phases = phases
        self.batches: list[list[TrainSample]] = []

    def _setup_sampling(self, state: Any, task: Task) -> Sampling:
        sampling = super()._setup_sampling(state, task)
        sampling.board.subscribe(self.phases)
        return sampling

    def _train_step(self, step: int, plan: StepPlan, info: dict[str, Any]) -> None:
        self.batches.append(list(plan.samples))
        super()._train_step(step, plan, info)


def run_config(server: VLLMServer, run_dir: Path, steps: int, overlap: bool) -> TrainerConfig:
    grpo = GRPOArgs(
        num_train_steps=steps,
        num_dspy_examples_per_grpo_step=EXAMPLES,
        num_samples_per_input=SAMPLES_PER_INPUT,
        num_threads=EXAMPLES * SAMPLES_PER_INPUT,
        num_steps_for_val=10_000,  # baseline and final validation only: outside the timed steps
        constrain_output_format=True,
        overlap_rollouts=overlap,
    )
    return trainer_config_for(server, run_dir, f"bench-{'overlap' if overlap else 'sequential'}", grpo, TRAIN)


def unload_run_adapters(server: VLLMServer) -> None:
    """Drop the previous run's policy-v* from vLLM: the next run reuses the names for other weights."""
    with httpx.Client(timeout=60) as client:
        for card in client.get(f"{server.openai_url}/models").json()["data"]:
            if version_step(card["id"]) is not None:
                client.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": card["id"]})


def run_trainer(server: VLLMServer, work: Path, steps: int, overlap: bool) -> tuple[PhaseLog, list[list[TrainSample]]]:
    phases = PhaseLog()
    run = BenchRun(run_config(server, Path(tempfile.mkdtemp(dir=work)), steps, overlap), phases)
    try:
        assert run.run() == "done"
    finally:
        run.close()
        unload_run_adapters(server)
    return phases, run.batches


def steady(values: Sequence[float]) -> list[float]:
    """A run's values without its first step (first adapter load, first compilation)."""
    return list(values[1:]) if len(values) > 1 else list(values)


# -- part 2: the same update, ours vs TRL -------------------------------------------------------


@dataclass
class UpdateTimes:
    old_logps: list[float] = field(default_factory=list)  # TRL's extra no-grad forward (0 for ours)
    forward_backward: list[float] = field(default_factory=list)
    optimizer: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def trl_trainer(model_dir: Path, out: Path) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(out),
        report_to="none",
        use_cpu=True,
        bf16=False,  # as ours on CPU: fp32, no autocast
        per_device_train_batch_size=TRAIN.per_device_train_batch_size,
        gradient_accumulation_steps=TRAIN.gradient_accumulation_steps,
        num_generations=SAMPLES_PER_INPUT,
        max_completion_length=TRAIN.max_completion_length,
        temperature=TRAIN.temperature,
        loss_type=TRAIN.loss_type,
        beta=TRAIN.beta,
        learning_rate=TRAIN.learning_rate,
        lr_scheduler_type=TRAIN.lr_scheduler_type,
        max_grad_norm=TRAIN.max_grad_norm,
        gradient_checkpointing=TRAIN.gradient_checkpointing,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=TRAIN.importance_sampling_cap,
        max_steps=TRAIN.max_steps,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["hello"] * 8}),
        processing_class=tokenizer,
        peft_config=peft_lora_config(TRAIN),
    )
    model = trainer.model
    if TRAIN.gradient_checkpointing and not model.is_gradient_checkpointing:
        # Trainer.train() does this at its start; we call TRL's loss directly.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainer.use_vllm = True  # in _compute_loss: apply the importance_sampling_ratio we pass
    trainer.current_gradient_accumulation_steps = TRAIN.gradient_accumulation_steps
    trainer.create_optimizer_and_scheduler(num_training_steps=TRAIN.max_steps)
    return trainer


def trl_update(trainer: Any, samples: Sequence[TrainSample], times: UpdateTimes) -> None:
    """One optimizer batch the way TRL's GRPOTrainer trains on it after vLLM generation."""
    per_device = TRAIN.per_device_train_batch_size
    micros = [samples[i : i + per_device] for i in range(0, len(samples), per_device)]
    model = trainer.model
    pad_id = trainer.processing_class.pad_token_id or 0
    n_items = sum(len(s.completion_ids) for s in samples)
    cap = TRAIN.importance_sampling_cap
    started = time.perf_counter()
    inputs = []
    with torch.no_grad():  # _generate_and_score_completions: old logprobs, always taken with vLLM IS correction
        for micro in micros:
            batch = trl_layout(micro, pad_id)
            ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
            old, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, batch["completion_ids"].size(1))
            batch["old_per_token_logps"] = old
            batch["importance_sampling_ratio"] = importance_weights(
                old, batch["sampling_per_token_logps"], batch["completion_mask"].float(), cap
            )
            batch["num_items_in_batch"] = torch.tensor(n_items)
            inputs.append(batch)
    forward_started = time.perf_counter()
    loss_sum = 0.0
    for batch in inputs:
        loss = trainer._compute_loss(model, batch)
        loss.backward()
        loss_sum += float(loss.detach())
    optimizer_started = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, TRAIN.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    ended = time.perf_counter()
    times.old_logps.append(forward_started - started)
    times.forward_backward.append(optimizer_started - forward_started)
    times.optimizer.append(ended - optimizer_started)
    times.total.append(ended - started)
    times.tokens.append(n_items)
    times.losses.append(loss_sum)


def compare_with_trl(model_dir: Path, batches: list[list[TrainSample]], rounds: int, work: Path) -> tuple[UpdateTimes, UpdateTimes]:
    """Both optimisers on the same optimizer batches, interleaved batch by batch, ``rounds`` times over."""
    ours_policy = load_policy(str(model_dir), TRAIN, "cpu")
    trainer = trl_trainer(model_dir, work / "trl")
    theirs = dict(trainer.model.named_parameters())
    with torch.no_grad():  # the same adapter weights (LoRA B non-zero, so the adapter path is exercised)
        gen = torch.Generator().manual_seed(0)
        for name, p in ours_policy.model.named_parameters():
            if "lora_" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
                theirs[name].copy_(p)
    optimizer = build_optimizer(ours_policy.trainable_parameters(), TRAIN)
    scheduler = build_scheduler(optimizer, TRAIN)
    ours, trl = UpdateTimes(), UpdateTimes()
    jobs = [ob for batch in batches for ob in optimizer_batches(batch, TRAIN, 1)]
    for _ in range(rounds):
        for ob in jobs:
            stats = train_on_samples(ours_policy, optimizer, scheduler, ob, TRAIN, DistContext())
            ours.forward_backward.append(stats.forward_backward_seconds)
            ours.optimizer.append(stats.optimizer_seconds)
            ours.old_logps.append(0.0)
            ours.total.append(stats.seconds)
            ours.tokens.append(stats.tokens)
            ours.losses.append(stats.loss)
            trl_update(trainer, ob, trl)
    return ours, trl


def padding_share(batches: list[list[TrainSample]]) -> tuple[float, float]:
    """Share of padded positions in the forward passes: ours (right-padded, sorted micro-batches) vs TRL's layout."""
    ours_real = ours_total = trl_total = 0
    for batch in batches:
        for ob in optimizer_batches(batch, TRAIN, 1):
            for micro in micro_batches(ob, TRAIN.per_device_train_batch_size):
                ours_total += len(micro) * max(s.length for s in micro)
                ours_real += sum(s.length for s in micro)
            for i in range(0, len(ob), TRAIN.per_device_train_batch_size):
                micro = ob[i : i + TRAIN.per_device_train_batch_size]
                trl_total += len(micro) * (max(len(s.prompt_ids) for s in micro) + max(len(s.completion_ids) for s in micro))
    return 1 - ours_real / max(ours_total, 1), 1 - ours_real / max(trl_total, 1)


# -- report ----------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def sync_side(phases: dict[str, list[float]]) -> float:
    """The update's side of a step: train, save, vLLM load, first request (the rollouts' side is rollout)."""
    return sum(med(phases[p]) for p in ("train", "save", "load", "first_request"))


def overlap_verdict(ratio: float) -> str:
    """The measured case for or against overlap, next to the default the trainer ships with."""
    default = GRPOArgs().overlap_rollouts
    measured = (
        f"overlap saves {1 - ratio:.0%} of the step here" if ratio < 1 else f"overlap costs {ratio - 1:.0%} of the step here"
    )
    return (
        f"**Default: `grpo.overlap_rollouts: {str(default).lower()}`.** Measured: {measured}, although generation "
        "and the update compete for the same 2 cores (each side slows down while the other runs). In the seed's "
        "deployment vLLM and the trainer have their own GPUs, so the overlapped step tends to max(generation, update) "
        "instead of their sum. The price is one step of policy lag (step k+1 samples on policy-v(k-1)), which the "
        "loss corrects with the truncated importance weight min(π_θ/π_sampler, 2) against the sampler's own logprobs "
        "(TRL's token_truncate vLLM IS correction); set it to false for strictly on-policy steps."
    )


def report(
    modes: dict[str, dict[str, list[float]]],
    tokens: dict[str, list[int]],
    ours: UpdateTimes,
    trl: UpdateTimes,
    padding: tuple[float, float],
    settings: str,
) -> str:
    seq, ovl = modes["sequential"], modes["overlapped"]
    lines = [
        (
            f"Step shape: {EXAMPLES} examples × {SAMPLES_PER_INPUT} samples (PAPILLON, offline metric, 2 policy calls "
            f"per rollout), micro-batch {TRAIN.per_device_train_batch_size} × {TRAIN.gradient_accumulation_steps} "
            f"accumulated, gradient checkpointing, dapo, LoRA r={TRAIN.lora_config.r}; {settings}."
        ),
        "",
        "### Per phase (median seconds per step; the first step of each run left out)",
        "",
        "| phase | sequential | overlapped |",
        "| --- | ---: | ---: |",
    ]
    notes = {
        "rollout": "rollout (generation + scoring, wall)",
        "reward": "reward (metric calls, summed over rollouts)",
        "rollout_wait": "update waiting for its rollouts",
        "forward_backward": "forward/backward",
        "optimizer": "optimizer (clip + AdamW + schedule)",
        "train": "whole update",
        "save": "adapter save",
        "load": "vLLM load",
        "first_request": "first request on the new adapter",
        "step": "**step wall time**",
    }
    for phase in PHASES:
        lines.append(f"| {notes[phase]} | {fmt(med(seq[phase]))} | {fmt(med(ovl[phase]))} |")
    for label, mode in (("sequential", seq), ("overlapped", ovl)):
        mode_tokens = tokens[label]
        rate = [t / s for t, s in zip(mode_tokens, mode["train"]) if s > 0]
        modes[label]["tokens_per_s"] = rate
    lines.append(f"| trained tokens / s (update) | {fmt(med(seq['tokens_per_s']), 0)} | {fmt(med(ovl['tokens_per_s']), 0)} |")
    lines.append(f"| trained tokens / step | {fmt(med(tokens['sequential']), 0)} | {fmt(med(tokens['overlapped']), 0)} |")

    generation, update = med(seq["rollout"]), sync_side(seq)
    limit = max(generation, update)
    step_seq, step_ovl = med(seq["step"]), med(ovl["step"])
    lines += [
        "",
        "### Sequential vs overlapped",
        "",
        "| | seconds | vs sequential |",
        "| --- | ---: | ---: |",
        f"| sequential step (median) | {fmt(step_seq)} | 1.00 |",
        f"| overlapped step (median) | {fmt(step_ovl)} | {fmt(step_ovl / step_seq, 2)} |",
        f"| generation side: rollout (sequential run) | {fmt(generation)} | {fmt(generation / step_seq, 2)} |",
        f"| update side: train + save + load + first request (sequential run) | {fmt(update)} | {fmt(update / step_seq, 2)} |",
        f"| limit max(generation, update) | {fmt(limit)} | {fmt(limit / step_seq, 2)} |",
        "",
        (
            f"Overlapped / sequential: **{step_ovl / step_seq:.2f}**; overlapped / limit: **{step_ovl / limit:.2f}**. "
            f"While overlapped, rollouts took {fmt(med(ovl['rollout']))} s instead of {fmt(generation)} s and the "
            f"update {fmt(med(ovl['train']))} s instead of {fmt(med(seq['train']))} s: both sides share the same cores here."
        ),
        "",
        overlap_verdict(step_ovl / step_seq),
    ]

    ratio = med(ours.total) / med(trl.total)
    loss_gap = max((abs(a - b) for a, b in zip(ours.losses, trl.losses)), default=float("nan"))
    lines += [
        "",
        "### The update: ours vs TRL GRPOTrainer (same batches, model, LoRA weights, loss; median seconds per optimizer step)",
        "",
        "| | ours | TRL | ours / TRL |",
        "| --- | ---: | ---: | ---: |",
        f"| old-logprob forward (TRL always takes it with vLLM IS correction) | {fmt(med(ours.old_logps))} | {fmt(med(trl.old_logps))} | – |",
        f"| forward/backward | {fmt(med(ours.forward_backward))} | {fmt(med(trl.forward_backward))} | {fmt(med(ours.forward_backward) / med(trl.forward_backward), 2)} |",
        f"| optimizer | {fmt(med(ours.optimizer))} | {fmt(med(trl.optimizer))} | {fmt(med(ours.optimizer) / med(trl.optimizer), 2)} |",
        f"| **whole update** | {fmt(med(ours.total))} | {fmt(med(trl.total))} | **{ratio:.2f}** |",
        f"| trained tokens / s | {fmt(med([t / s for t, s in zip(ours.tokens, ours.total)]), 0)} | {fmt(med([t / s for t, s in zip(trl.tokens, trl.total)]), 0)} | {fmt(1 / ratio, 2)}× throughput |",
        f"| padded share of forward positions | {padding[0]:.1%} | {padding[1]:.1%} | |",
        "",
        (
            f"{len(ours.total)} optimizer steps each, interleaved. Assumption: only the optimisation is compared — "
            "TRL gets our exact sampled batches (prompt/completion ids, sampler logprobs, advantages) in its own "
            "layout (left-padded prompts, right-padded completions, micro-batches in batch order) and does what its "
            "GRPOTrainer does with them after vLLM generation (old-logprob forward, `_compute_loss` + backward per "
            "micro-batch, clip, AdamW, schedule); generation, rewards and advantages are not part of it. Both start "
            f"from the same LoRA weights and stay equal step for step: largest |loss difference| {loss_gap:.1e}."
        ),
        "",
        (
            f"Padding: sorting each rank's samples by length before cutting micro-batches (update.py) leaves "
            f"{padding[0]:.1%} padded positions, so packing could save at most that share of the forward work; "
            "it is not done."
        ),
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def vllm_server(model_dir: Path, log_dir: Path) -> Iterator[VLLMServer]:
    yield from start_vllm_server(model_dir, log_dir, start_timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run × 3 steps per mode, 1 replay pass")
    parser.add_argument("--rounds", type=int, default=1, help="runs per mode, alternating (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 5; quick 3)")
    parser.add_argument("--replays", type=int, default=None, help="passes over the batches in the TRL comparison (default 3; quick 1)")
    args = parser.parse_args()
    rounds = args.rounds
    steps = args.steps or (3 if args.quick else 5)
    replays = args.replays or (1 if args.quick else 3)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    load_start = os.getloadavg()[0]
    model_dir = ensure_tiny_model()
    modes: dict[str, dict[str, list[float]]] = {"sequential": defaultdict(list), "overlapped": defaultdict(list)}
    tokens: dict[str, list[int]] = {"sequential": [], "overlapped": []}
    batches: list[list[TrainSample]] = []
    with tempfile.TemporaryDirectory(prefix="bench-trainer-step-") as tmp:
        work = Path(tmp)
        with vllm_server(model_dir, work) as server:
            for round_ in range(rounds):
                for label in ("sequential", "overlapped"):
                    started = time.monotonic()
                    phases, trained = run_trainer(server, work, steps, overlap=label == "overlapped")
                    for phase in PHASES:
                        modes[label][phase] += steady(phases.seconds.get(phase, []))
                    tokens[label] += steady(phases.tokens)
                    if label == "sequential":
                        batches += [b for b in trained if b]
                    print(f"round {round_ + 1}/{rounds} {label}: {steps} steps in {time.monotonic() - started:.0f} s", flush=True)
        print(f"replaying {len(batches)} batches through ours and TRL, {replays}×", flush=True)
        ours, trl = compare_with_trl(model_dir, batches, replays, work)
    settings = (
        f"{rounds} run(s) × {steps} steps per mode, alternating; {replays} replay passes; "
        f"1-min load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (the machine is shared)"
    )
    body = report(modes, tokens, ours, trl, padding_share(batches), settings)
    print(body)
    write_section(NAME, f"## Trainer step\n\n{header(NAME)}\n{body}\n")


if __name__ == "__main__":
    main()
