"""The GRPO policy loss, token for token as TRL's GRPOTrainer computes it.

Per completion token: ratio r = exp(logp - old_logp); loss = -min(r·A,
clip(r, 1-ε, 1+ε_high)·A), multiplied by the truncated importance weight
min(exp(old_logp - sampler_logp), cap) that corrects for the sampler (vLLM) having
drawn the tokens from slightly different weights, plus β·KL(ref) when β > 0.
The same weight covers overlapped rollouts, drawn by the adapter one step behind:
old_logp is the policy before this update (the proximal policy of decoupled PPO),
sampler_logp the behaviour policy, and truncation bounds the variance (TRL's
``vllm_importance_sampling_mode="token_truncate"``).

Normalisation (``loss_type``) differs from TRL only in bookkeeping: TRL divides
each micro-batch by its accumulation count and lets DDP average over ranks; here
each micro-batch is divided by sizes of the whole optimizer batch (``LossScale``)
and gradients are summed over ranks. With equal, full micro-batches the two give
the same gradient (tests/unit/test_loss_trl.py checks the formulas against TRL);
with a ragged final batch this form weights every sequence/token equally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from grpo_trainer.contract.hparams import LossType, TrainKwargs


@dataclass(frozen=True)
class LossOptions:
    """The loss hyperparameters (a subset of TrainKwargs, plus TRL defaults we keep)."""

    loss_type: LossType = "dapo"
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    beta: float = 0.0
    # TRL's use_bias_correction_kl (default True): the KL term is weighted by the
    # (differentiable) ratio, which makes its gradient the unbiased reverse-KL gradient.
    kl_ratio_weighting: bool = True
    max_completion_length: Optional[int] = None
    mask_truncated_completions: bool = False
    # None disables the sampler/trainer correction (TRL: vllm_importance_sampling_correction=False).
    importance_sampling_cap: Optional[float] = 2.0

    def __post_init__(self) -> None:
        if self.loss_type == "dr_grpo" and self.max_completion_length is None:
            raise ValueError("loss_type dr_grpo needs max_completion_length")

    @property
    def upper_epsilon(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def excludes(self, truncated: bool) -> bool:
        """Whether a completion contributes no tokens to the loss (the single truncation rule)."""
        return self.mask_truncated_completions and truncated

    @classmethod
    def from_train(cls, train: TrainKwargs) -> "LossOptions":
        return cls(
            loss_type=train.loss_type,
            epsilon=train.epsilon,
            epsilon_high=train.epsilon_high,
            beta=train.beta,
            max_completion_length=train.max_completion_length,
            mask_truncated_completions=train.mask_truncated_completions,
            importance_sampling_cap=train.importance_sampling_cap,
        )


@dataclass(frozen=True)
class LossScale:
    """Sizes of the whole optimizer batch (all ranks, all micro-batches)."""

    sequences: int  # completions (truncated ones included, as TRL counts them)
    tokens: int  # active completion tokens (after truncation masking)
    micro_batches: int  # micro-batches summed over ranks

    def __post_init__(self) -> None:
        if self.sequences < 1 or self.micro_batches < 1:
            raise ValueError(f"an optimizer batch needs sequences and micro-batches: {self}")


@dataclass(frozen=True)
class LossStats:
    """Sums over active tokens, so micro-batches and ranks add up exactly."""

    tokens: float = 0.0
    ratio_sum: float = 0.0
    clipped_low: float = 0.0
    clipped_high: float = 0.0
    kl_sum: float = 0.0  # ratio-weighted when kl_ratio_weighting (TRL logs that too)
    is_weight_sum: float = 0.0

    def __add__(self, other: "LossStats") -> "LossStats":
        return LossStats(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[float, ...]:
        return (self.tokens, self.ratio_sum, self.clipped_low, self.clipped_high, self.kl_sum, self.is_weight_sum)

    def _mean(self, total: float) -> float:
        return total / self.tokens if self.tokens else 0.0

    @property
    def clip_fraction(self) -> float:
        """Fraction of tokens whose ratio is clipped in the direction that zeroes the gradient."""
        return self._mean(self.clipped_low + self.clipped_high)

    @property
    def clip_fraction_low(self) -> float:
        """Tokens with a negative advantage whose ratio fell below 1 - epsilon (TRL's clip_ratio/low_mean)."""
        return self._mean(self.clipped_low)

    @property
    def clip_fraction_high(self) -> float:
        """Tokens with a positive advantage whose ratio rose above 1 + epsilon_high (clip_ratio/high_mean)."""
        return self._mean(self.clipped_high)

    @property
    def mean_ratio(self) -> float:
        return self._mean(self.ratio_sum)

    @property
    def mean_kl(self) -> float:
        return self._mean(self.kl_sum)

    @property
    def mean_is_weight(self) -> float:
        return self._mean(self.is_weight_sum)


@dataclass(frozen=True)
class LossResult:
    loss: torch.Tensor  # scalar, to backward; already scaled for summation over the optimizer batch
    stats: LossStats


def loss_mask(completion_mask: torch.Tensor, truncated: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """Completion mask with truncated completions zeroed when the options say so."""
    if not options.mask_truncated_completions:
        return completion_mask
    return completion_mask * (~truncated).unsqueeze(1).to(completion_mask.dtype)


def importance_weights(
    old_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """TRL's token_truncate weights: min(exp(old - sampler), cap); unscored (NaN) tokens get 1."""
    diff = torch.nan_to_num((old_logps - sampler_logps) * mask, nan=0.0)
    return torch.clamp(torch.exp(diff), max=cap)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    options: LossOptions,
    scale: LossScale,
    *,
    truncated: Optional[torch.Tensor] = None,
    ref_logps: Optional[torch.Tensor] = None,
    sampler_logps: Optional[torch.Tensor] = None,
) -> LossResult:
    """The loss of one micro-batch.

    logps, old_logps, ref_logps, sampler_logps, completion_mask: (B, T), right-padded;
    advantages, truncated: (B,). Only ``logps`` carries gradient.
    """
    if truncated is None:
        truncated = torch.zeros(logps.size(0), dtype=torch.bool, device=logps.device)
    mask = loss_mask(completion_mask, truncated, options).to(logps.dtype)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    eps_low, eps_high = options.epsilon, options.upper_epsilon

    ratio = torch.exp(logps - old_logps.detach())
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)

    is_weight: Optional[torch.Tensor] = None
    if options.importance_sampling_cap is not None:
        if sampler_logps is None:
            raise ValueError("importance sampling correction needs the sampler's logprobs")
        is_weight = importance_weights(old_logps.detach(), sampler_logps, mask, options.importance_sampling_cap)
        per_token = per_token * is_weight

    kl: Optional[torch.Tensor] = None
    if options.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs reference logprobs")
        delta = ref_logps.detach() - logps
        kl = torch.exp(delta) - delta - 1
        if options.kl_ratio_weighting:
            kl = kl * ratio
        per_token = per_token + options.beta * kl

    masked = per_token * mask
    if options.loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / scale.sequences
    elif options.loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0) / scale.micro_batches
    elif options.loss_type == "dr_grpo":
        assert options.max_completion_length is not None
        loss = masked.sum() / (scale.sequences * options.max_completion_length)
    elif options.loss_type == "dapo":
        loss = masked.sum() / max(scale.tokens, 1)
    else:  # pragma: no cover - LossType is a closed Literal
        raise ValueError(f"unknown loss_type {options.loss_type!r}")

    return LossResult(loss=loss, stats=_stats(ratio, adv, mask, eps_low, eps_high, kl, is_weight))


@torch.no_grad()
def _stats(
    ratio: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    kl: Optional[torch.Tensor],
    is_weight: Optional[torch.Tensor],
) -> LossStats:
    def total(x: torch.Tensor) -> float:
        return float((x.to(mask.dtype) * mask).sum())

    return LossStats(
        tokens=float(mask.sum()),
        ratio_sum=total(ratio),
        clipped_low=total((ratio < 1 - eps_low) & (adv < 0)),
        clipped_high=total((ratio > 1 + eps_high) & (adv > 0)),
        kl_sum=total(kl) if kl is not None else 0.0,
        is_weight_sum=total(is_weight) if is_weight is not None else 0.0,
    )
