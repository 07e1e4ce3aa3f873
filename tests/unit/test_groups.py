"""GRPO groups from built rollouts (grpo_trainer.grpo.groups is pure): pooling, zero-variance groups and the
alignment of predictors called a varying number of times, in each of DSPy's grouping modes."""

from __future__ import annotations

import pytest

from grpo_trainer.dspy.lms import LMCall
from grpo_trainer.grpo.groups import ALL_PREDICTORS, Grouping, _raw_groups, build_groups
from grpo_trainer.grpo.rollout import Rollout


def call(predictor: str, invocation: int, tokens: list[int], finish: str = "stop") -> LMCall:
    return LMCall(
        predictor=predictor,
        invocation=invocation,
        model="policy-v1",
        messages=[],
        prompt_ids=[1, 2, invocation],
        completion_ids=tokens,
        logprobs=[-0.5] * len(tokens),
        finish_reason=finish,
        text="",
    )


def rollout(example: int, sample: int, reward: float, calls: list[LMCall]) -> Rollout:
    return Rollout(example_index=example, sample_index=sample, reward=reward, failure=None, calls=calls)


def test_groups_pool_predictors_when_multitask_and_split_them_otherwise() -> None:
    rollouts = [
        rollout(0, s, reward, [call("a", 0, [10 + s]), call("b", 0, [20 + s], finish="length")])
        for s, reward in enumerate([1.0, 0.0, 0.5])
    ]
    pooled = build_groups(rollouts, multitask=True, scale_rewards=False)
    assert [name for name, _ in pooled.batches] == [ALL_PREDICTORS]
    assert sorted(s.group for s in pooled.samples) == ["0/a/0"] * 3 + ["0/b/0"] * 3
    a = [s for s in pooled.samples if s.group == "0/a/0"]
    assert [s.advantage for s in a] == pytest.approx([0.5, -0.5, 0.0])  # r - mean, unscaled
    assert [s.completion_ids for s in a] == [[10], [11], [12]]
    assert all(s.truncated for s in pooled.samples if s.group == "0/b/0")

    split = build_groups(rollouts, multitask=False, scale_rewards=True)
    assert [name for name, _ in split.batches] == ["a", "b"]
    assert all(len(batch) == 3 for _, batch in split.batches)
    assert [s.advantage for s in split.batches[0][1]] == pytest.approx([1.0, -1.0, 0.0], rel=1e-3)  # / std(=0.5)


def test_zero_variance_groups_are_counted_and_skipped() -> None:
    rollouts = [rollout(0, s, 0.7, [call("a", 0, [s + 1])]) for s in range(4)]
    rollouts += [rollout(1, s, float(s), [call("a", 0, [s + 1])]) for s in range(4)]
    grouped = build_groups(rollouts, multitask=True, scale_rewards=False)
    assert grouped.zero_variance_groups == 1
    assert [g.key.example_index for g in grouped.groups] == [1]
    assert len(grouped.samples) == 4 and grouped.total_groups == 2


# A group of four rollouts of one example: predictor "a" is called 0, 1, 3 and 2 times (completion token
# 10 * sample + invocation), "b" once by each rollout that got that far.
VARIED = [
    rollout(0, 0, 0.0, []),  # failed before reaching any predictor
    rollout(0, 1, 1.0, [call("a", 0, [10]), call("b", 0, [91])]),
    rollout(0, 2, 2.0, [call("a", 0, [20]), call("a", 1, [21]), call("a", 2, [22]), call("b", 0, [92])]),
    rollout(0, 3, 3.0, [call("a", 0, [30]), call("a", 1, [31])]),  # never reached b
]


def groups_of(grouping: Grouping, predictor: str = "a") -> dict[int, list[list[int]]]:
    """invocation slot -> the completions of its group, in sample order (all groups, single-sample ones too)."""
    return {
        key.invocation: [r.calls[i].completion_ids for _, r, i in entries]
        for key, entries in _raw_groups(VARIED, grouping).items()
        if key.predictor == predictor
    }


def test_truncate_cuts_every_rollout_to_the_fewest_calls_of_those_that_called_it() -> None:
    assert groups_of(Grouping("truncate")) == {0: [[10], [20], [30]]}
    assert groups_of(Grouping("truncate"), "b") == {0: [[91], [92]]}  # the rollouts that never got there sit out


def test_fill_repeats_a_rollouts_own_calls_up_to_the_most_calls() -> None:
    assert groups_of(Grouping("fill", "max")) == {  # max: a rollout's last call fills its gaps
        0: [[10], [20], [30]],
        1: [[10], [21], [31]],
        2: [[10], [22], [31]],
    }
    fills = {
        tuple(tuple(c) for c in groups_of(Grouping("fill", "randint", seed=seed))[2]) for seed in range(20)
    }  # randint: one of the rollout's own calls at random, seeded
    assert {fill[2] for fill in fills} == {(30,), (31,)} and all(fill[:2] == ((10,), (22,)) for fill in fills)
    assert groups_of(Grouping("fill", "randint", seed=3)) == groups_of(Grouping("fill", "randint", seed=3))


def test_ragged_keeps_the_calls_as_made_and_a_group_of_one_carries_no_signal() -> None:
    assert groups_of(Grouping("ragged")) == {0: [[10], [20], [30]], 1: [[21], [31]], 2: [[22]]}
    grouped = build_groups(VARIED, multitask=True, scale_rewards=False, grouping=Grouping("ragged"))
    assert sorted(g.key.label() for g in grouped.groups) == ["0/a/0", "0/a/1", "0/b/0"]
    assert grouped.single_sample_groups == 1  # 0/a/2: only rollout 2 made a third call
    assert [s.advantage for s in grouped.samples if s.group == "0/a/1"] == pytest.approx([-0.5, 0.5])


def test_each_mode_trains_on_the_groups_it_made() -> None:
    sizes = {}
    for grouping in (Grouping("truncate"), Grouping("fill", "max"), Grouping("ragged")):
        grouped = build_groups(VARIED, multitask=True, scale_rewards=False, grouping=grouping)
        sizes[grouping.mode] = sorted((g.key.label(), len(g.samples)) for g in grouped.groups)
    assert sizes == {
        "truncate": [("0/a/0", 3), ("0/b/0", 2)],
        "fill": [("0/a/0", 3), ("0/a/1", 3), ("0/a/2", 3), ("0/b/0", 2)],
        "ragged": [("0/a/0", 3), ("0/a/1", 2), ("0/b/0", 2)],
    }


def test_fill_needs_a_strategy() -> None:
    with pytest.raises(ValueError, match="fill strategy"):
        Grouping("fill")
