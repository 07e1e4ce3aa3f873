"""GRPO groups from rollouts: the samples that share a prompt slot compete on reward.

A group is (example, predictor, invocation): the completions of one predictor's
n-th call across the rollouts of one example, each carrying its whole rollout's
reward. A predictor called a varying number of times is aligned per invocation
as DSPy's GRPO ``variably_invoked_predictor_grouping_mode`` says: ``truncate``
every rollout to the fewest calls, ``fill`` every rollout to the most calls by
repeating its own (``randint``: one at random, seeded; ``max``: its last), or
``ragged``, as called. A rollout that never called a predictor (it failed before
reaching it) sits out that predictor's groups; DSPy drops those groups instead,
which would waste the signal among the rollouts that did reach it. Groups whose
rewards are all equal carry no gradient: they are counted and skipped.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

from grpo_trainer.contract.hparams import FillStrategy, GroupingMode
from grpo_trainer.dspy.lms import derive_seed
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


@dataclass(frozen=True)
class Grouping:
    """How calls of a variably invoked predictor line up (GRPOArgs' variably_invoked_predictor_* fields)."""

    mode: GroupingMode = "truncate"
    fill_strategy: Optional[FillStrategy] = None
    seed: int = 0  # of the randint fill; pass a new one per step (e.g. the step's rollout seed)

    def __post_init__(self) -> None:
        if self.mode == "fill" and self.fill_strategy is None:
            raise ValueError("grouping mode fill needs a fill strategy (randint or max)")

    def align(self, invocations: list[list[int]], rng: random.Random, slots: int) -> list[list[int]]:
        """One rollout's invocations (each: its call indices), as many as ``slots`` says its mode keeps."""
        if self.mode == "truncate":
            return invocations[:slots]
        if self.mode == "fill":
            missing = slots - len(invocations)
            if self.fill_strategy == "randint":
                return invocations + [rng.choice(invocations) for _ in range(missing)]
            return invocations + [invocations[-1]] * missing
        return invocations

    def rng(self, example_index: int, predictor: str, sample_index: int) -> random.Random:
        """The randint fill's generator of one rollout's calls: the same step fills the same way on a resume."""
        return random.Random(derive_seed("fill", self.seed, example_index, predictor, sample_index))

    def slots(self, counts: list[int]) -> int:
        """How many groups (invocation slots) the rollouts' call counts make."""
        return min(counts) if self.mode == "truncate" else max(counts)


def _invocations(rollout: Rollout, predictor: str) -> list[list[int]]:
    """The rollout's calls of ``predictor`` as invocations in call order, each the indices of its calls (n choices)."""
    order: dict[int, list[int]] = {}
    for i, call in enumerate(rollout.calls):
        if call.predictor == predictor:
            order.setdefault(call.invocation, []).append(i)
    return list(order.values())


def _raw_groups(rollouts: Sequence[Rollout], grouping: Grouping) -> dict[GroupKey, list[tuple[float, Rollout, int]]]:
    """(example, predictor, invocation) -> [(reward, rollout, call index)], invocations aligned by ``grouping``."""
    by_example: dict[int, list[Rollout]] = defaultdict(list)
    for r in rollouts:
        by_example[r.example_index].append(r)
    groups: dict[GroupKey, list[tuple[float, Rollout, int]]] = {}
    for example_index in sorted(by_example):
        members = sorted(by_example[example_index], key=lambda r: r.sample_index)
        predictors = sorted({call.predictor for r in members for call in r.calls})
        for predictor in predictors:
            # rollout position -> its invocations of the predictor (rollouts that never called it sit out)
            called = {pos: invs for pos, r in enumerate(members) if (invs := _invocations(r, predictor))}
            slots = grouping.slots([len(invs) for invs in called.values()])
            aligned = {
                pos: grouping.align(invs, grouping.rng(example_index, predictor, members[pos].sample_index), slots)
                for pos, invs in called.items()
            }
            for slot in range(slots):
                groups[GroupKey(example_index, predictor, slot)] = [
                    (members[pos].reward, members[pos], i)
                    for pos, invs in sorted(aligned.items())
                    if slot < len(invs)
                    for i in invs[slot]
                ]
    return groups


def build_groups(
    rollouts: Sequence[Rollout], *, multitask: bool, scale_rewards: bool, grouping: Grouping = Grouping()
) -> GroupedSamples:
    """TrainSamples with group-relative advantages, pooled (multitask) or per predictor.

    With ``multitask=False`` there is one batch per predictor (sorted by name),
    so the training loop can alternate between predictors step by step.
    """
    kept: list[Group] = []
    zero_variance = single = empty = 0
    for key, entries in _raw_groups(rollouts, grouping).items():
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
