"""The training input: exact sampled tokens with their group-normalised advantage.

The rollout side builds these from vLLM's responses (token ids as sampled, never
re-tokenised text); the optimisation side only ever sees this type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# TRL adds this to the group std so a group with (almost) equal rewards does not blow up.
STD_EPSILON = 1e-4


@dataclass(frozen=True)
class TrainSample:
    """One completion of one prompt, as the sampler produced it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    advantage: float
    truncated: bool = False
    group: str = ""

    def __post_init__(self) -> None:
        if not self.completion_ids:
            raise ValueError("a TrainSample needs at least one completion token")
        if len(self.sampler_logprobs) != len(self.completion_ids):
            raise ValueError(
                f"sampler_logprobs has {len(self.sampler_logprobs)} entries for {len(self.completion_ids)} tokens"
            )

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def advantages(rewards: list[float], scale_rewards: bool) -> list[float]:
    """Group-relative advantages A = r - mean(r), optionally / (std(r) + 1e-4).

    std is the sample standard deviation (Bessel-corrected, n - 1), as TRL's
    ``torch.std`` default; a group of one has no spread and gets std 0.
    """
    n = len(rewards)
    if n == 0:
        return []
    mean = math.fsum(rewards) / n
    centred = [r - mean for r in rewards]
    if not scale_rewards:
        return centred
    std = math.sqrt(math.fsum(c * c for c in centred) / (n - 1)) if n > 1 else 0.0
    return [c / (std + STD_EPSILON) for c in centred]
