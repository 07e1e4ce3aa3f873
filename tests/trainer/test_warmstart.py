"""The tiny model's warm start: the data it learns from, and that it learns from them."""

from __future__ import annotations

from pathlib import Path

from dspy.adapters import ChatAdapter

from grpo_trainer.dspy.programs.papillon import CRAFT, PAPILLON, RESPOND
from grpo_trainer.dspy.rewards.offline import leakage
from grpo_trainer.embedded.bundled.build_pii_delegation import build
from grpo_trainer.embedded.tinymodel import make_tiny_model
from grpo_trainer.embedded.warmstart import (
    PAIRS_PER_ROW,
    REASONING_FORWARD,
    REASONING_REDACT,
    WarmStartSpec,
    papillon_pairs,
    warm_start,
)


def test_pairs_are_what_rollouts_see_and_the_redacted_habit_leaks_nothing():
    rows = build(seed=11, n=40, with_redacted=True)
    pairs = papillon_pairs(rows, seed=11)
    assert len(pairs) == PAIRS_PER_ROW * len(rows)
    predictors = dict(PAPILLON(untrusted_model=None).named_predictors())
    adapter = ChatAdapter()
    habits = {REASONING_FORWARD: 0, REASONING_REDACT: 0}
    for row, craft, untrusted, respond in zip(rows, pairs[0::3], pairs[1::3], pairs[2::3]):
        # the completions parse as the program's own predictors' outputs
        parsed = adapter.parse(predictors[CRAFT].signature, craft.completion)
        habits[parsed["reasoning"]] += 1
        if parsed["reasoning"] == REASONING_REDACT:
            assert leakage(row["pii_units"], parsed["llm_request"]) == 0.0
        else:
            assert parsed["llm_request"] == row["user_query"]
        assert untrusted.messages == [{"role": "user", "content": parsed["llm_request"]}]
        assert adapter.parse(predictors[RESPOND].signature, respond.completion)["response"] == row["target_response"]
    assert min(habits.values()) >= 10, habits  # both habits, about half each


def test_warm_start_lowers_the_loss_and_rewrites_the_model(tmp_path: Path):
    model = make_tiny_model(tmp_path / "m")
    before = (model / "model.safetensors").read_bytes()
    figures = warm_start(model, WarmStartSpec(steps=40, batch_size=4, examples=48))
    assert figures["final_loss"] < 0.75 * figures["first_loss"], figures
    assert (model / "model.safetensors").read_bytes() != before
