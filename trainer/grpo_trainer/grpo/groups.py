"""GRPO groups from rollouts: the samples that share a prompt slot compete on reward.

A group is (example, predictor, invocation): the completions of one predictor's
n-th call across the rollouts of one example, each carrying its whole rollout's
reward. A predictor called a varying number of times is aligned per invocation
by truncating to the shortest count among the rollouts that called it (a rollout
that failed before reaching a predictor has no sample for it). Groups whose
rewards are all equal carry no gradient: they are counted and skipped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from grpo_trainer.grpo.rollout import Rollout
from grpo_trainer.grpo.samples import TrainSample, advantages

logger = logging.getLogger(__name__)

# Every predictor's samples in one optimisation step (multitask=True).
ALL_PREDICTORS = "*"
# Rewards closer than this are "equal" (a float metric may differ in the last bits).
ZERO_VARIANCE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class GroupKey:
    example_index: int
    predictor: str
    invocation: int

    def label(self) -> str:
        return f"{self.example_index}/{self.predictor}/{self.invocation}"


@dataclass
class Group:
    key: GroupKey
    rewards: list[float]
    samples: list[TrainSample]


@dataclass
class GroupedSamples:
    """The step's training input: batches of samples, and what was left out and why."""

    batches: list[tuple[str, list[TrainSample]]]  # (predictor or ALL_PREDICTORS, samples)
    groups: list[Group]  # the groups kept (non-zero reward variance)
    zero_variance_groups: int = 0
    single_sample_groups: int = 0

    @property
    def samples(self) -> list[TrainSample]:
        return [s for _, batch in self.batches for s in batch]

    @property
    def total_groups(self) -> int:
        return len(self.groups) + self.zero_variance_groups + self.single_sample_groups


def _raw_groups(rollouts: Sequence[Rollout]) -> dict[GroupKey, list[tuple[float, Rollout, int]]]:
    """(example, predictor, invocation) -> [(reward, rollout, call index)], invocations truncated to the shortest."""
    by_example: dict[int, list[Rollout]] = defaultdict(list)
    for r in rollouts:
        by_example[r.example_index].append(r)
    groups: dict[GroupKey, list[tuple[float, Rollout, int]]] = {}
    for example_index in sorted(by_example):
        members = sorted(by_example[example_index], key=lambda r: r.sample_index)
        # predictor -> rollout position -> the invocation numbers of its calls, in order
        invocations: dict[str, dict[int, list[int]]] = defaultdict(dict)
        for pos, r in enumerate(members):
            for call in r.calls:
                invocations[call.predictor].setdefault(pos, [])
                if call.invocation not in invocations[call.predictor][pos]:
                    invocations[call.predictor][pos].append(call.invocation)
        for predictor in sorted(invocations):
            per_rollout = invocations[predictor]
            shortest = min(len(v) for v in per_rollout.values())
            for slot in range(shortest):
                entries = []
                for pos, invs in sorted(per_rollout.items()):
                    r = members[pos]
                    wanted = invs[slot]
                    entries += [
                        (r.reward, r, i)
                        for i, c in enumerate(r.calls)
                        if c.predictor == predictor and c.invocation == wanted
                    ]
                groups[GroupKey(example_index, predictor, slot)] = entries
    return groups


def build_groups(rollouts: Sequence[Rollout], *, multitask: bool, scale_rewards: bool) -> GroupedSamples:
    """TrainSamples with group-relative advantages, pooled (multitask) or per predictor.

    With ``multitask=False`` there is one batch per predictor (sorted by name),
    so the training loop can alternate between predictors step by step.
    """
    kept: list[Group] = []
    zero_variance = single = empty = 0
    for key, entries in _raw_groups(rollouts).items():
        usable = [(reward, r, i) for reward, r, i in entries if r.calls[i].completion_ids]
        empty += len(entries) - len(usable)
        if len(usable) < 2:
            single += 1
            continue
        rewards = [reward for reward, _, _ in usable]
        if max(rewards) - min(rewards) <= ZERO_VARIANCE_TOLERANCE:
            zero_variance += 1
            continue
        advs = advantages(rewards, scale_rewards)
        samples = []
        for (_, r, i), adv in zip(usable, advs, strict=True):
            call = r.calls[i]
            samples.append(
                TrainSample(
                    prompt_ids=list(call.prompt_ids),
                    completion_ids=list(call.completion_ids),
                    sampler_logprobs=list(call.logprobs),
                    advantage=adv,
                    truncated=call.truncated,
                    group=key.label(),
                )
            )
        kept.append(Group(key=key, rewards=rewards, samples=samples))
    if multitask:
        batches = [(ALL_PREDICTORS, [s for g in kept for s in g.samples])]
    else:
        predictors = sorted({g.key.predictor for g in kept})
        batches = [(p, [s for g in kept if g.key.predictor == p for s in g.samples]) for p in predictors]
    result = GroupedSamples(
        batches=batches,
        groups=kept,
        zero_variance_groups=zero_variance,
        single_sample_groups=single,
    )
    logger.info(
        "groups built",
        extra={
            "kept": len(kept),
            "zero_variance": zero_variance,
            "single_sample": single,
            "empty_completions": empty,
            "samples": len(result.samples),
        },
    )
    return result
