"""One GRPO update: the step's samples → optimizer steps on the LoRA policy, data-parallel.

Every rank receives the same global list of samples (the main rank broadcasts
them). It is cut into optimizer batches of per_device_train_batch_size ×
gradient_accumulation_steps × world_size samples; rank r takes samples r, r+W,
r+2W, ... of each batch, sorts them by length (less padding) and accumulates
gradients over micro-batches of per_device_train_batch_size. Gradients are summed
over ranks by hand after the last micro-batch (so ranks may hold different numbers
of micro-batches in a ragged final batch), clipped, and applied.

With fp16 the policy's gradient scaler scales the loss before backward; the summed
gradients are unscaled before clipping, and an optimizer step whose gradients
overflowed is skipped (the scaler lowers its scale; the learning-rate schedule does not
advance), as transformers' Trainer does. Every rank sums the same gradients, so every
rank skips the same steps.

Each sample is trained on once, so old_logps is the current policy's logps
detached (ratio 1, TRL's num_iterations=1): the policy before this update is the
proximal policy. The sampler's distance from it — vLLM's numerics, and with
overlapped rollouts one step of lag — is corrected by the loss's truncated
importance weight against the sampler's logprobs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.loss import LossOptions, LossScale, LossStats, grpo_loss
from grpo_trainer.grpo.policy import Policy, collate, policy_logprobs, reference_logprobs
from grpo_trainer.grpo.samples import TrainSample
from grpo_trainer.run.distributed import DistContext, all_reduce_sum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateStats:
    """What one call did, summed or averaged over all ranks."""

    loss: float  # mean over optimizer steps of the optimizer batch's loss
    grad_norm: float  # mean over the applied optimizer steps of the pre-clipping global gradient norm
    tokens: int  # active completion tokens trained on
    sequences: int
    clip_fraction: float
    clip_fraction_low: float
    clip_fraction_high: float
    mean_ratio: float
    mean_kl: float
    mean_is_weight: float
    lr: float  # learning rate of the last optimizer step
    optimizer_steps: int  # optimizer batches, skipped ones included
    seconds: float
    forward_backward_seconds: float = 0.0  # this rank's collation, forward and backward passes
    optimizer_seconds: float = 0.0  # this rank's gradient reduction, clipping, optimizer and scheduler steps
    skipped_steps: int = 0  # fp16: steps whose gradients overflowed, not applied


def optimizer_batches(samples: Sequence[TrainSample], train: TrainKwargs, world_size: int) -> list[list[TrainSample]]:
    """Consecutive chunks of the global sample list, one optimizer step each (the last may be partial)."""
    size = train.per_device_train_batch_size * train.gradient_accumulation_steps * world_size
    return [list(samples[i : i + size]) for i in range(0, len(samples), size)]


def micro_batches(shard: Sequence[TrainSample], per_device: int) -> list[list[TrainSample]]:
    """This rank's shard sorted by length (stable, so deterministic) and cut into micro-batches."""
    ordered = sorted(shard, key=lambda s: s.length)
    return [ordered[i : i + per_device] for i in range(0, len(ordered), per_device)]


def _active_tokens(samples: Sequence[TrainSample], options: LossOptions) -> int:
    return sum(0 if options.excludes(s.truncated) else len(s.completion_ids) for s in samples)


def _sum_gradients(params: list[torch.nn.Parameter], dist: DistContext) -> None:
    """Sum gradients over ranks in one flat all-reduce; a rank without samples contributes zeros."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not dist.is_distributed:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce_sum(flat, dist)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> bool:
    """Apply the (unscaled, clipped) gradients; False when fp16's scaler found them overflowing and skipped it."""
    if scaler is None:
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before  # the scale drops only after an overflow


def train_on_samples(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    samples: Sequence[TrainSample],
    train: TrainKwargs,
    dist: DistContext,
) -> UpdateStats:
    """Train on the global list ``samples`` (identical on every rank); one optimizer step per batch."""
    started = time.monotonic()
    options = LossOptions.from_train(train)
    params = policy.trainable_parameters()
    scaler = policy.grad_scaler
    policy.model.train()
    per_device = train.per_device_train_batch_size

    totals = LossStats()
    loss_sum = grad_norm_sum = 0.0
    tokens = sequences = steps = skipped = 0
    fb_seconds = opt_seconds = 0.0
    lr = optimizer.param_groups[0]["lr"]
    for batch in optimizer_batches(samples, train, dist.world_size):
        shard = batch[dist.rank :: dist.world_size]
        micro = micro_batches(shard, per_device)
        # Global sizes before any backward: dapo divides by the tokens of all ranks.
        counts = torch.tensor(
            [len(shard), _active_tokens(shard, options), len(micro)], dtype=torch.float64, device=dist.device
        )
        all_reduce_sum(counts, dist)
        scale = LossScale(sequences=int(counts[0]), tokens=int(counts[1]), micro_batches=max(int(counts[2]), 1))

        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        step_stats = LossStats()
        fb_started = time.perf_counter()
        for group in micro:
            mb = collate(group, policy.device, train.max_prompt_length)
            ref = reference_logprobs(policy, mb) if options.beta != 0.0 else None
            logps = policy_logprobs(policy, mb)
            result = grpo_loss(
                logps,
                logps.detach(),
                mb.advantages,
                mb.completion_mask,
                options,
                scale,
                truncated=mb.truncated,
                ref_logps=ref,
                sampler_logps=mb.sampler_logps,
            )
            (scaler.scale(result.loss) if scaler is not None else result.loss).backward()
            step_loss += float(result.loss.detach())
            step_stats = step_stats + result.stats
        opt_started = time.perf_counter()
        fb_seconds += opt_started - fb_started

        _sum_gradients(params, dist)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm))
        lr = optimizer.param_groups[0]["lr"]
        if _optimizer_step(optimizer, scaler):
            scheduler.step()
            grad_norm_sum += grad_norm
        else:
            skipped += 1
            log.warning("fp16 gradients overflowed: optimizer step skipped", extra={"scale": scaler.get_scale()})
        optimizer.zero_grad(set_to_none=True)
        opt_seconds += time.perf_counter() - opt_started

        reduced = all_reduce_sum(
            torch.tensor([step_loss, *step_stats.as_tuple()], dtype=torch.float64, device=dist.device), dist
        ).tolist()
        loss_sum += reduced[0]
        totals = totals + LossStats(*reduced[1:])
        tokens += scale.tokens
        sequences += scale.sequences
        steps += 1

    stats = UpdateStats(
        loss=loss_sum / steps if steps else 0.0,
        grad_norm=grad_norm_sum / (steps - skipped) if steps > skipped else 0.0,
        tokens=tokens,
        sequences=sequences,
        clip_fraction=totals.clip_fraction,
        clip_fraction_low=totals.clip_fraction_low,
        clip_fraction_high=totals.clip_fraction_high,
        mean_ratio=totals.mean_ratio,
        mean_kl=totals.mean_kl,
        mean_is_weight=totals.mean_is_weight,
        lr=lr,
        optimizer_steps=steps,
        skipped_steps=skipped,
        seconds=time.monotonic() - started,
        forward_backward_seconds=fb_seconds,
        optimizer_seconds=opt_seconds,
    )
    log.info("update done", extra={"update": stats.__dict__})
    return stats
