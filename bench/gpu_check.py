"""GPU check: the trainer's own GRPO update at the seed's shape on one GPU, in one command.

What it runs (nothing from the hub, no vLLM, no network):

1. A model of Qwen2.5-1.5B-Instruct's shape with random weights (transformers
   Qwen2Config: hidden 1536, intermediate 8960, 28 layers, 12 attention heads,
   2 KV heads (head_dim 128), vocab 151936, tied embeddings, q/k/v biases and no
   o_proj bias, rope_theta 1e6, rms_norm_eps 1e-6, silu, max positions 32768:
   1.544 B parameters), built in bf16 on the GPU. ``--device cpu`` builds a tiny
   model of the same architecture instead (the CI smoke).
2. The trainer's own update, ``grpo_trainer.grpo.update.train_on_samples`` on a
   ``wrap_policy`` policy, with the seed's train_kwargs (SEED_TRAIN below:
   8 sequences per micro-batch × 4 accumulated, gradient checkpointing, bf16,
   dapo, LoRA r=8 α=16 dropout 0.05 on q,k,v,o,gate,up,down, lr 1e-6,
   constant_with_warmup, weight_decay 0.001) on synthetic samples: random
   token ids of about 725 tokens (prompt 540–660 + completion 80–170; the CPU
   smoke 48–80 + 12–40), groups of
   8 with random rewards (the project's ``advantages``, unscaled as the seed),
   sampler logprobs = the policy's own + N(0, 0.3²) noise (so the truncated
   importance weight varies and sometimes hits its cap of 2).
3. Our loss against TRL's ``GRPOTrainer._compute_loss`` on one micro-batch
   (support/trl_reference.py, the approach of tests/unit/test_loss_trl.py): a
   real GRPOTrainer on a copy of the same base with the same LoRA weights (B
   non-zero), LoRA dropout off in both (dropout is random), one micro-batch per
   optimizer step. Compared: per-token logprobs (TRL's left-padded scoring vs our
   right-padded one), the loss ``train_on_samples`` reports vs TRL's (difference
   relative to Σ|A·w|/N, the loss's own scale), and the gradient (cosine and
   pre-clipping norm; ours captured at the optimizer step). Tolerances: TOL_BF16
   on the GPU (bf16 autocast, two paddings), TOL_FP32 on the CPU.
4. Figures of the timed optimizer steps (seed shape, after a warm-up step):
   trained (completion) tokens/s, sequence tokens/s, MFU and HFU against the
   device's dense bf16 peak (H200 SXM: 989 TFLOP/s; another GPU: "unknown"),
   and torch.cuda.max_memory_allocated over those steps. FLOPs (``flops``):
   with T tokens of a step, T_c its completion tokens and s each sequence's length,
   fwd = 2·N_layers·T + 2·N_head·T_c + 2·L·d·Σs² (the fused LM head projects
   completion positions only; causal attention), adapters 2·N_lora·T per pass;
   model FLOPs = 2·fwd + 3·(2·N_lora·T) (forward and input-gradient backward of
   the frozen base, forward and both backwards of the adapters; the classic
   6·N·T counts weight gradients the frozen base does not have); hardware FLOPs
   add gradient checkpointing's recompute of the decoder layers. CPU: tokens/s
   only.
5. A one-process nccl group (gloo on CPU) through the pod's launcher:
   ``python -m grpo_trainer.run.launch --nproc 1 bench/_gpu_check_worker.py``,
   whose rank calls ``init_distributed`` and runs all_reduce + broadcast_object;
   the launcher must exit 0.
6. The trained adapter saved with the trainer's own ``AdapterStore.save`` and
   reloaded with ``PeftModel.from_pretrained`` on a fresh model holding the base
   weights: weights equal, logits equal the trained model's within tolerance
   (and differ from the bare base's, so the adapter is really in them).
7. Prints the tables; writes the ``gpu_check`` section of bench/RESULTS.md on a
   GPU (``--no-write`` skips it), on the CPU only with ``--write``.
8. Exits 1 when a check fails, naming it.

On the GPU machine (python3 there has torch, transformers, peft, triton and,
in the H200 image, pandas, pyarrow, httpx; no network), in one command:

    bash bench/gpu_wheels.sh                      # here: the missing wheels into .gpu-wheels/ (cp312)
    GRPO_SYSTEM_PYTHON=1 GRPO_WHEELS=.gpu-wheels bash bench/run.sh gpu_check   # there; carry .gpu-wheels

``GRPO_SYSTEM_PYTHON=1`` makes bench/run.sh use the machine's python3 instead of
building the project's venv (which needs the wheelhouse), and installs the carried
wheels with ``pip install --no-index --no-deps --target`` into a temporary folder
put first on PYTHONPATH. Carried: trl, datasets, dill, multiprocess, pydantic,
pydantic-core, annotated-types, typing-inspection, typing-extensions: 4.4 MiB for
CPython 3.12 (GPU_PYTHON=3.x bash bench/gpu_wheels.sh for another). Measured on an
H200: 48 s for the check, 74 s for the command (wheels installed), start-up of the
machine aside; bench/gpu_profile.py breaks the step's time down.

    bash bench/run.sh gpu_check --device cpu --no-write   # the CI smoke (tests/trainer/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from _results import header, write_section
from peft import PeftModel, get_peft_model_state_dict
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.loss import importance_weights
from grpo_trainer.grpo.optim import build_optimizer, build_scheduler
from grpo_trainer.grpo.policy import Policy, collate, peft_lora_config, policy_logprobs, wrap_policy
from grpo_trainer.grpo.samples import TrainSample, advantages
from grpo_trainer.grpo.update import micro_batches, optimizer_batches, train_on_samples
from grpo_trainer.run.distributed import DistContext
from grpo_trainer.vllm.adapters import AdapterStore
from support.seed import seed_call

NAME = "gpu_check"
BENCH = Path(__file__).resolve().parent
WORKER = BENCH / "_gpu_check_worker.py"

# The tutorial's train_kwargs (tests/data/rl_papillon_seed.py, "NOTE: Training on 4 GPUs").
SEED_TRAIN_KWARGS: dict[str, object] = seed_call()[0]
SEED_TRAIN = TrainKwargs(**SEED_TRAIN_KWARGS)

# Qwen2.5-1.5B-Instruct's config.json, less the tokenizer-only and dtype keys.
QWEN25_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=True,
    use_sliding_window=False,
    sliding_window=32768,
    max_window_layers=21,
    attention_dropout=0.0,
    initializer_range=0.02,
    bos_token_id=151643,
    eos_token_id=151645,
)
# The same architecture, small enough for the 2-core CI machine.
TINY_QWEN2 = dict(QWEN25_15B, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4)
TINY_QWEN2.update(num_key_value_heads=2, vocab_size=2048, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)

# (prompt, completion) token counts, uniform and inclusive: about 725 tokens per sequence on the GPU,
# ten times fewer in the CPU smoke (the 2-core CI machine).
LENGTHS = {"cuda": ((540, 660), (80, 170)), "cpu": ((48, 80), (12, 40))}
GROUP = 8  # the seed's num_samples_per_input
SAMPLER_NOISE = 0.3  # std of the sampler's logprobs around the policy's
LORA_B_STD = 0.02  # LoRA B is zero at init, which would hide the adapter path from every comparison
PEAK_BF16_DENSE = {"H200": 989e12, "H100 80GB HBM3": 989e12}  # FLOP/s, SXM parts, by device-name substring


@dataclass(frozen=True)
class Tolerance:
    """Bounds of one precision mode; bf16 differences come from rounding at different padding, not from bugs."""

    logp_max: float  # max |ours - TRL| per completion token
    logp_mean: float  # mean of the same
    loss: float  # |ours - TRL| / (Σ|A·w|·mask / N)
    grad_cosine: float  # minimum cosine similarity of the LoRA gradients
    grad_norm: float  # |‖ours‖ - ‖TRL‖| / ‖TRL‖ (before clipping)
    logits: float  # max |trained - reloaded| logits


TOL_FP32 = Tolerance(logp_max=1e-4, logp_mean=1e-5, loss=1e-5, grad_cosine=0.99999, grad_norm=1e-4, logits=1e-5)
TOL_BF16 = Tolerance(logp_max=0.25, logp_mean=0.03, loss=3e-2, grad_cosine=0.98, grad_norm=5e-2, logits=2e-2)


@dataclass
class Check:
    name: str
    ok: bool
    value: str
    bound: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, value: str, bound: str) -> None:
        self.checks.append(Check(name, bool(ok), value, bound))

    def figure(self, name: str, value: str) -> None:
        self.figures.append((name, value))

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def markdown(self) -> str:
        lines = ["| check | result | measured | bound |", "| --- | --- | --- | --- |"]
        lines += [f"| {c.name} | {'ok' if c.ok else '**FAILED**'} | {c.value} | {c.bound} |" for c in self.checks]
        lines += ["", "| figure | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in self.figures]
        return "\n".join(lines)


# -- model, samples ------------------------------------------------------------------------------


def build_base(shape: dict[str, object], device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """A random-weight Qwen2 causal LM, created directly on ``device`` (fast on a GPU, no hub)."""
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    return model.to(dtype)


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by the work they do: decoder-layer matmuls, the (tied) LM head, the LoRA adapters."""

    total: int
    layers: int
    head: int
    lora: int = 0


def count_base(model: PreTrainedModel) -> ParamCounts:
    """Before PEFT wraps it: ``layers`` counts the matrices (norm weights and biases cost no matmul)."""
    layers = sum(p.numel() for p in model.model.layers.parameters() if p.dim() >= 2)
    head = model.get_output_embeddings().weight.numel()
    return ParamCounts(total=sum(p.numel() for p in model.parameters()), layers=layers, head=head)


def synthetic_samples(
    n: int, vocab: int, lengths: tuple[tuple[int, int], tuple[int, int]], rng: random.Random, scale_rewards: bool
) -> list[TrainSample]:
    """``n`` samples in groups of GROUP: random tokens, random rewards, the project's group advantages."""
    (p_lo, p_hi), (c_lo, c_hi) = lengths
    out: list[TrainSample] = []
    for g in range(math.ceil(n / GROUP)):
        rewards = [rng.random() for _ in range(GROUP)]
        for adv in advantages(rewards, scale_rewards=scale_rewards):
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(p_lo, p_hi))]
            completion = [rng.randrange(3, vocab) for _ in range(rng.randint(c_lo, c_hi))]
            out.append(TrainSample(prompt, completion, [0.0] * len(completion), adv, group=f"g{g}"))
    return out[:n]


def with_sampler_logprobs(policy: Policy, samples: Sequence[TrainSample], gen: torch.Generator) -> list[TrainSample]:
    """The samples with sampler logprobs near the policy's own (what vLLM reports for the tokens it drew)."""
    out: list[TrainSample] = []
    for i in range(0, len(samples), 8):
        chunk = samples[i : i + 8]
        batch = collate(chunk, policy.device)
        with torch.no_grad(), lora_dropout(policy.model, 0.0):
            logps = policy_logprobs(policy, batch).float().cpu()
        noise = SAMPLER_NOISE * torch.randn(logps.shape, generator=gen)
        for j, s in enumerate(chunk):
            n = len(s.completion_ids)
            sampler = (logps[j, :n] + noise[j, :n]).tolist()
            out.append(TrainSample(s.prompt_ids, s.completion_ids, sampler, s.advantage, s.truncated, s.group))
    return out


@contextlib.contextmanager
def lora_dropout(model: torch.nn.Module, p: float) -> Iterator[None]:
    """Set every LoRA dropout to ``p`` for the block (comparisons need the same forward twice)."""
    drops = [
        m for name, m in model.named_modules() if ".lora_dropout." in f"{name}." and isinstance(m, torch.nn.Dropout)
    ]
    saved = [d.p for d in drops]
    for d in drops:
        d.p = p
    try:
        yield
    finally:
        for d, q in zip(drops, saved):
            d.p = q


def randomise_lora_b(policy: Policy, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(LORA_B_STD * torch.randn(p.shape, generator=gen))


@dataclass(frozen=True)
class Target:
    """Where a GPU benchmark runs: the seed's model shape in bf16 on a GPU, the tiny one in fp32 on the CPU."""

    device: torch.device
    shape: dict[str, object]
    dtype: torch.dtype

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def parse_target(parser: argparse.ArgumentParser, tool: str) -> tuple[argparse.Namespace, Target] | None:
    """The arguments, with ``--device``, and the target they name; None, said on stderr, when cuda is
    asked for and there is none."""
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu: the tiny CI smoke"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    choice = args.device
    if choice == "cuda" and not torch.cuda.is_available():
        print(f"{tool}: no CUDA device here; run with --device cpu for the smoke", file=sys.stderr)
        return None
    if choice == "cuda":
        dtype = torch.bfloat16 if SEED_TRAIN.bf16 else torch.float32
        return args, Target(torch.device("cuda", torch.cuda.current_device()), QWEN25_15B, dtype)
    return args, Target(torch.device("cpu"), TINY_QWEN2, torch.float32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- 3: ours vs TRL ------------------------------------------------------------------------------


def grads_at_step(policy: Policy, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], object]:
    """Copies of the gradients the optimizer steps on (after clipping), filled by a step pre-hook."""
    names = {id(p): n for n, p in policy.named_trainable_parameters()}
    captured: dict[str, torch.Tensor] = {}

    def hook(opt: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    captured[names[id(p)]] = p.grad.detach().float().clone()

    return captured, optimizer.register_step_pre_hook(hook)


def flat(grads: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([grads[n].reshape(-1).float().cpu() for n in names])


def compare_with_trl(
    policy: Policy,
    trl_base: PreTrainedModel,
    samples: list[TrainSample],
    vocab: int,
    tol: Tolerance,
    work: Path,
    report: Report,
) -> None:
    """One micro-batch through TRL's _compute_loss and through train_on_samples (one optimizer step)."""
    from support.trl_reference import grpo_trainer, trl_layout, trl_scores, word_tokenizer  # TRL: only here

    device = policy.device
    train = SEED_TRAIN.model_copy(update={"gradient_accumulation_steps": 1})
    batch = samples[: train.per_device_train_batch_size]
    cap = train.importance_sampling_cap
    trainer = grpo_trainer(
        trl_base,
        work / "trl",
        word_tokenizer(vocab),
        peft_lora_config(train),
        per_device_train_batch_size=train.per_device_train_batch_size,
        num_generations=train.per_device_train_batch_size,
        gradient_accumulation_steps=1,
        use_cuda=device.type == "cuda",
        use_vllm_ratio=True,
        loss_type=train.loss_type,
        beta=train.beta,
        epsilon=train.epsilon,
        temperature=train.temperature,
        learning_rate=train.learning_rate,
        max_grad_norm=train.max_grad_norm,
        gradient_checkpointing=train.gradient_checkpointing,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=cap,
    )
    theirs = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_" in name:
                theirs[name].copy_(p)

    with lora_dropout(policy.model, 0.0), lora_dropout(trainer.model, 0.0):
        layout = trl_layout(batch, pad_id=0, device=device)
        mask = layout["completion_mask"].float()
        old = trl_scores(trainer, layout).float()
        ratio = importance_weights(old, layout["sampling_per_token_logps"], mask, cap)
        n_items = int(mask.sum())
        inputs = {**layout, "old_per_token_logps": old, "importance_sampling_ratio": ratio}
        inputs["num_items_in_batch"] = torch.tensor(n_items, device=device)
        trainer.model.zero_grad(set_to_none=True)
        trl_loss = trainer._compute_loss(trainer.model, inputs)
        trl_loss.backward()
        trl_grads = {
            n: p.grad.detach().float().clone() for n, p in trainer.model.named_parameters() if p.grad is not None
        }
        trainer.model.zero_grad(set_to_none=True)
        loss_scale = float((layout["advantages"].unsqueeze(1).abs() * ratio * mask).sum()) / n_items

        with torch.no_grad():
            ours_logps = policy_logprobs(policy, collate(batch, device)).float()
        t = ours_logps.size(1)
        diff = ((ours_logps - old[:, :t]).abs() * mask[:, :t])[mask[:, :t].bool()]

        optimizer = build_optimizer(policy.trainable_parameters(), train)
        scheduler = build_scheduler(optimizer, train)
        ours_grads, handle = grads_at_step(policy, optimizer)
        stats = train_on_samples(policy, optimizer, scheduler, batch, train, DistContext(device=device))
        handle.remove()

    del trainer, theirs
    report.check(
        "logprobs ours vs TRL (max / mean abs, nats)",
        float(diff.max()) <= tol.logp_max and float(diff.mean()) <= tol.logp_mean,
        f"{float(diff.max()):.2e} / {float(diff.mean()):.2e} over {diff.numel()} tokens",
        f"≤ {tol.logp_max:g} / {tol.logp_mean:g}",
    )
    trl_value = float(trl_loss.detach())
    loss_gap = abs(stats.loss - trl_value) / max(loss_scale, 1e-12)
    report.check(
        "loss ours vs TRL (dapo, one micro-batch)",
        loss_gap <= tol.loss,
        f"ours {stats.loss:.6e}, TRL {trl_value:.6e}; Δ/scale {loss_gap:.1e} (scale Σ|A·w|/N = {loss_scale:.3e})",
        f"≤ {tol.loss:g}",
    )
    names = sorted(trl_grads)
    if set(names) != set(ours_grads) or not names:
        report.check("gradient ours vs TRL", False, f"{len(ours_grads)} vs {len(trl_grads)} LoRA tensors", "same set")
        return
    ours_vec, trl_vec = flat(ours_grads, names), flat(trl_grads, names)
    cosine = float(torch.nn.functional.cosine_similarity(ours_vec, trl_vec, dim=0))
    trl_norm = float(trl_vec.norm())
    norm_gap = abs(stats.grad_norm - trl_norm) / max(trl_norm, 1e-30)
    report.check("gradient cosine ours vs TRL", cosine >= tol.grad_cosine, f"{cosine:.6f}", f"≥ {tol.grad_cosine:g}")
    report.check(
        "gradient norm ours vs TRL (before clipping)",
        norm_gap <= tol.grad_norm,
        f"ours {stats.grad_norm:.4e}, TRL {trl_norm:.4e}; rel {norm_gap:.1e}",
        f"≤ {tol.grad_norm:g}",
    )


# -- 4: the timed update -------------------------------------------------------------------------


def flops(samples: Sequence[TrainSample], counts: ParamCounts, n_layers: int, width: int) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one update on ``samples``; see the module docstring."""
    tokens = sum(s.length for s in samples)
    completion = sum(len(s.completion_ids) for s in samples)
    attention = 2.0 * n_layers * width * sum(s.length**2 for s in samples)
    layers_fwd = 2.0 * counts.layers * tokens + attention
    fwd = layers_fwd + 2.0 * counts.head * completion
    lora_fwd = 2.0 * counts.lora * tokens
    model = 2 * fwd + 3 * lora_fwd
    return model, model + layers_fwd + lora_fwd


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    peak = next((v for key, v in PEAK_BF16_DENSE.items() if key in name), None)
    return name, peak


def timed_update(
    policy: Policy,
    samples: list[TrainSample],
    counts: ParamCounts,
    shape: dict[str, object],
    warmup: int,
    steps: int,
    report: Report,
) -> None:
    device = policy.device
    optimizer = build_optimizer(policy.trainable_parameters(), SEED_TRAIN)
    scheduler = build_scheduler(optimizer, SEED_TRAIN)
    batches = optimizer_batches(samples, SEED_TRAIN, 1)
    dist = DistContext(device=device)
    for batch in batches[:warmup]:
        train_on_samples(policy, optimizer, scheduler, batch, SEED_TRAIN, dist)
    release(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds: list[float] = []
    done: list[TrainSample] = []
    completion_tokens = 0
    for batch in batches[warmup : warmup + steps]:
        sync(device)
        started = time.perf_counter()
        stats = train_on_samples(policy, optimizer, scheduler, batch, SEED_TRAIN, dist)
        sync(device)
        seconds.append(time.perf_counter() - started)
        completion_tokens += stats.tokens
        done += batch
        if not math.isfinite(stats.loss) or not math.isfinite(stats.grad_norm):
            report.check("update finite", False, f"loss {stats.loss}, grad norm {stats.grad_norm}", "finite")
    total = sum(seconds)
    tokens = sum(s.length for s in done)
    padded = sum(
        len(m) * max(s.length for s in m)
        for b in batches[warmup : warmup + steps]
        for m in micro_batches(b, SEED_TRAIN.per_device_train_batch_size)
    )
    per = SEED_TRAIN.per_device_train_batch_size * SEED_TRAIN.gradient_accumulation_steps
    report.figure(
        "timed optimizer steps",
        f"{len(seconds)} after {warmup} warm-up; {per} sequences each "
        f"({SEED_TRAIN.per_device_train_batch_size} × {SEED_TRAIN.gradient_accumulation_steps} accumulated), "
        f"mean length {tokens / max(len(done), 1):.0f} tokens, {1 - tokens / max(padded, 1):.1%} padding",
    )
    report.figure("seconds per optimizer step (median)", f"{statistics.median(seconds):.3f}")
    report.figure(
        "trained tokens / s (completion tokens, as progress.json counts)", f"{completion_tokens / total:,.0f}"
    )
    report.figure("sequence tokens / s (prompt + completion)", f"{tokens / total:,.0f}")
    name, peak = peak_flops(device)
    model_flops, hardware_flops = flops(done, counts, int(shape["num_hidden_layers"]), int(shape["hidden_size"]))
    if device.type != "cuda":
        mfu = hfu = memory = "n/a (cpu)"
    else:
        memory = (
            f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated, "
            f"{torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB reserved"
        )
        if peak is None:
            mfu = hfu = f"unknown (no peak bf16 figure for {name}); {model_flops / total / 1e12:.1f} TFLOP/s model"
        else:
            mfu = f"{model_flops / total / peak:.1%} ({model_flops / total / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f})"
            hfu = f"{hardware_flops / total / peak:.1%} ({hardware_flops / total / 1e12:.1f} TFLOP/s)"
    report.figure("MFU (model FLOPs: 2·fwd of the frozen base + 6·N_lora·T)", mfu)
    report.figure("HFU (+ gradient-checkpointing recompute)", hfu)
    report.figure("peak GPU memory over the timed steps", memory)


# -- 5: the launcher ----------------------------------------------------------------------------


def launcher_check(device: torch.device, report: Report) -> None:
    argv = [sys.executable, "-m", "grpo_trainer.run.launch", "--nproc", "1", str(WORKER), "--device", device.type]
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        report.check(
            "launcher --nproc 1: group, all_reduce, broadcast_object", False, "timed out after 300 s", "exit 0"
        )
        return
    seconds = time.perf_counter() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("gpu_check_worker ")), "")
    backend = json.loads(line.split(" ", 2)[2]).get("backend") if line.startswith("gpu_check_worker ok ") else None
    ok = proc.returncode == 0 and backend is not None
    if not ok:
        sys.stderr.write(f"launcher output:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n")
    report.check(
        f"launcher --nproc 1: {backend or device.type} group, all_reduce, broadcast_object",
        ok,
        f"exit {proc.returncode} in {seconds:.1f} s",
        "exit 0",
    )


# -- 6: save and reload --------------------------------------------------------------------------


def reload_check(
    policy: Policy,
    base_state: dict[str, torch.Tensor],
    shape: dict[str, object],
    dtype: torch.dtype,
    samples: list[TrainSample],
    tol: Tolerance,
    work: Path,
    report: Report,
) -> None:
    device = policy.device
    saved = AdapterStore(work / "run", base_model_name="qwen2.5-1.5b-shape-random").save(policy, step=1)
    fresh = build_base(shape, device, dtype)
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, str(saved.path))
    reloaded.eval()
    policy.model.eval()
    live = get_peft_model_state_dict(policy.model)
    loaded = get_peft_model_state_dict(reloaded)
    same_weights = set(live) == set(loaded) and all(torch.equal(live[k].cpu(), loaded[k].cpu()) for k in live)
    batch = collate(samples[:2], device)
    dtype = policy.autocast_dtype
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        ids, att = batch.input_ids, batch.attention_mask
        trained = policy.model(input_ids=ids, attention_mask=att).logits.float()
        again = reloaded(input_ids=ids, attention_mask=att).logits.float()
        with policy.model.disable_adapter():
            bare = policy.model(input_ids=ids, attention_mask=att).logits.float()
    policy.model.train()
    real = att.bool()
    gap = float((trained - again).abs()[real].max())
    effect = float((trained - bare).abs()[real].max())
    report.check(
        "adapter saved (AdapterStore.save) and reloaded (PeftModel.from_pretrained): logits",
        same_weights and gap <= tol.logits and effect > 10 * tol.logits,
        f"max |Δ| {gap:.2e}; weights {'equal' if same_weights else 'DIFFER'}; adapter's own effect {effect:.2e}",
        f"≤ {tol.logits:g} (effect > {10 * tol.logits:g})",
    )
    del reloaded, fresh


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 4 on cuda, 1 on cpu)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed optimizer steps first (default 1 on cuda, 0 on cpu)"
    )
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help="write bench/RESULTS.md's section on cpu too")
    write.add_argument("--no-write", action="store_true", help="never write bench/RESULTS.md")
    if (parsed := parse_target(parser, NAME)) is None:
        return 2
    args, target = parsed
    device, shape, dtype, cuda = target.device, target.shape, target.dtype, target.cuda
    steps = args.steps if args.steps is not None else (4 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    tol = TOL_BF16 if cuda else TOL_FP32
    started = time.perf_counter()
    report = Report()
    torch.manual_seed(0)
    rng = random.Random(0)

    base = build_base(shape, device, dtype)
    counts = count_base(base)
    base_state = {k: v.detach().to("cpu", copy=True) for k, v in base.state_dict().items()}
    trl_base = copy.deepcopy(base)  # before wrap_policy patches the LM head: TRL adds its own
    policy = wrap_policy(base, SEED_TRAIN, device)
    randomise_lora_b(policy, seed=1)
    counts = ParamCounts(
        counts.total, counts.layers, counts.head, sum(p.numel() for p in policy.trainable_parameters())
    )
    per_step = SEED_TRAIN.per_device_train_batch_size * SEED_TRAIN.gradient_accumulation_steps
    gen = torch.Generator().manual_seed(2)
    vocab = int(shape["vocab_size"])
    samples = synthetic_samples(per_step * (warmup + steps), vocab, LENGTHS[device.type], rng, SEED_TRAIN.scale_rewards)
    samples = with_sampler_logprobs(policy, samples, gen)
    setup_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        compare_with_trl(policy, trl_base, samples, vocab, tol, work, report)
        del trl_base
        release(device)
        timed_update(policy, samples, counts, shape, warmup, steps, report)
        launcher_check(device, report)
        reload_check(policy, base_state, shape, dtype, samples, tol, work, report)

    name, _ = peak_flops(device)
    shape_text = "Qwen2.5-1.5B-Instruct shape" if cuda else "tiny Qwen2 (CI smoke)"
    report.figure("device", f"{name}; {'bf16 autocast, bf16 weights' if dtype == torch.bfloat16 else 'fp32'}")
    report.figure(
        "model",
        f"{shape_text}, random weights: {counts.total / 1e9:.3f} B params ({shape['num_hidden_layers']} layers, "
        f"hidden {shape['hidden_size']}, vocab {shape['vocab_size']}); LoRA r={SEED_TRAIN.lora_config.r} "
        f"α={SEED_TRAIN.lora_config.lora_alpha:g} on {len(SEED_TRAIN.lora_config.target_modules)} projections: "
        f"{counts.lora / 1e6:.2f} M trainable",
    )
    report.figure(
        "versions",
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"trl {_trl_version()}",
    )
    report.figure("wall time", f"{time.perf_counter() - started:.0f} s (model and samples {setup_seconds:.0f} s)")
    kwargs = json.dumps(SEED_TRAIN_KWARGS, separators=(", ", ": "))
    body = report.markdown() + f"\n\ntrain_kwargs (the seed's): `{kwargs}`\n"
    print(body)
    if report.failed:
        for c in report.failed:
            print(f"gpu_check FAILED: {c.name}: {c.value} (bound {c.bound})", file=sys.stderr)
    else:
        print("gpu_check: all checks passed")
    if not args.no_write and (cuda or args.write):
        write_section(NAME, f"## GPU check\n\n{header(NAME)}\n{body}")
    return 1 if report.failed else 0


def _trl_version() -> str:
    import trl

    return trl.__version__


if __name__ == "__main__":
    sys.exit(main())
