"""Data parallelism: 2 CPU processes (the trainer pod's launcher, gloo) train exactly like 1 process.

The same global batch either way: one process accumulates 4 micro-batches of 2,
two processes accumulate 2 micro-batches of 2 each (both 8 samples per optimizer
step). Nine samples make the second step ragged (1 sample: rank 1 has none and
contributes zero gradient). Only the main rank holds the samples; the other
receives them by broadcast. The LoRA weights after the update must agree.

The optimizer here is SGD at lr 1, so a weight's change is its (clipped) summed
gradient: AdamW divides by sqrt(v), which turns the float noise of a different
summation order (~1e-7 relative) on near-zero gradient entries into weight
differences of ~1e-5 that say nothing about the data parallelism under test.

This file is also the worker script the launcher runs (``python test_ddp.py --out``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.optim import build_scheduler
from grpo_trainer.grpo.policy import Policy, collate, policy_logprobs, wrap_policy
from grpo_trainer.grpo.samples import TrainSample, advantages
from grpo_trainer.grpo.update import train_on_samples
from grpo_trainer.run.distributed import DistContext, broadcast_object, init_distributed, shutdown

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
PER_DEVICE = 2
GLOBAL_ACCUM = 4  # micro-batches per optimizer step in total, over all ranks


def _policy(train: TrainKwargs) -> Policy:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=200,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    base = LlamaForCausalLM(cfg)
    torch.manual_seed(1)
    policy = wrap_policy(base, train, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-zero LoRA B, so both adapter matrices train from the first step
        for name, p in policy.named_trainable_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return policy


def _samples(policy: Policy) -> list[TrainSample]:
    """Nine completions of three prompts with varied lengths, one truncated; sampler = initial policy."""
    gen = torch.Generator().manual_seed(3)
    raw: list[tuple[list[int], list[int], bool]] = []
    for g, prompt_len in enumerate((3, 6, 4)):
        prompt = [1] + torch.randint(4, 200, (prompt_len,), generator=gen).tolist()
        for k in range(3):
            n = int(torch.randint(1, 7, (1,), generator=gen))
            raw.append((prompt, torch.randint(4, 200, (n,), generator=gen).tolist(), g == 1 and k == 0))
    rewards = torch.rand(len(raw), generator=gen).tolist()
    adv = [a for g in range(3) for a in advantages(rewards[3 * g : 3 * g + 3], scale_rewards=True)]
    probe = [TrainSample(p, c, [0.0] * len(c), 0.0) for p, c, _ in raw]
    with torch.no_grad():
        logps = policy_logprobs(policy, collate(probe, torch.device("cpu")))
    return [
        TrainSample(p, c, logps[i, : len(c)].tolist(), adv[i], truncated=t, group=str(i // 3))
        for i, (p, c, t) in enumerate(raw)
    ]


def run(dist: DistContext) -> dict[str, dict]:
    """Train each loss type from the same start on the same samples; the main rank's results."""
    results: dict[str, dict] = {}
    for loss_type in LOSS_TYPES:
        train = TrainKwargs(
            per_device_train_batch_size=PER_DEVICE,
            gradient_accumulation_steps=GLOBAL_ACCUM // dist.world_size,
            learning_rate=1.0,
            lr_scheduler_type="constant",
            loss_type=loss_type,
            max_completion_length=8,
            beta=0.05,
            mask_truncated_completions=True,
            lora_config={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        )
        policy = _policy(train)
        samples = broadcast_object(_samples(policy) if dist.is_main else None, dist)
        optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=train.learning_rate)
        scheduler = build_scheduler(optimizer, train)
        stats = train_on_samples(policy, optimizer, scheduler, samples, train, dist)
        results[loss_type] = {
            "lora": {n: p.detach().clone() for n, p in policy.named_trainable_parameters()},
            "stats": asdict(stats),
        }
    return results


def _worker(out: Path) -> None:
    dist = init_distributed("cpu")
    results = run(dist)
    if dist.is_main:
        torch.save(results, out)
    shutdown(dist)


def test_two_processes_train_like_one(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    rank_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in rank_vars}
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_trainer.run.launch", "--nproc", "2", __file__, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = torch.load(out)
    single = run(DistContext())
    for loss_type in LOSS_TYPES:
        one, two = single[loss_type], ddp[loss_type]
        assert two["stats"]["optimizer_steps"] == one["stats"]["optimizer_steps"] == 2
        assert two["stats"]["tokens"] == one["stats"]["tokens"]
        assert two["stats"]["sequences"] == one["stats"]["sequences"] == 9
        assert two["stats"]["loss"] == pytest.approx(one["stats"]["loss"], rel=1e-5, abs=1e-7)
        assert two["stats"]["grad_norm"] == pytest.approx(one["stats"]["grad_norm"], rel=1e-5)
        for name, weight in one["lora"].items():
            torch.testing.assert_close(two["lora"][name], weight, atol=1e-6, rtol=0, msg=f"{loss_type} {name}")
        start = _policy(TrainKwargs(lora_config={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}))
        moved = max(float((one["lora"][n] - p.detach()).abs().max()) for n, p in start.named_trainable_parameters())
        assert moved > 1e-2  # the update did something


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    _worker(parser.parse_args().out)
