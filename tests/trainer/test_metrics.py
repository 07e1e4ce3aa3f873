"""PAPILLON's metrics: the deterministic offline metric, the judge composite, and name resolution."""

from __future__ import annotations

import sys
import types
from typing import Any, Iterator

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from grpo_trainer.dspy.programs.papillon import CRAFT, PAPILLON, RESPOND
from grpo_trainer.dspy.registry import resolve_metric, resolve_program
from grpo_trainer.dspy.rewards.offline import leakage, papillon_offline, trigram_f1
from grpo_trainer.dspy.rewards.papillon import make_compute_overall_score, pii_units

GOLD = "A weekly meal plan for someone managing gout: build each meal around vegetables and lean protein."


def example(pii: str = "Hannah Haddad||gout||gout") -> dspy.Example:
    return dspy.Example(user_query="I am Hannah Haddad and have gout.", target_response=GOLD, pii_str=pii).with_inputs(
        "user_query"
    )


def test_offline_leakage_is_the_fraction_of_distinct_units_found_verbatim_ignoring_case() -> None:
    assert pii_units("Hannah Haddad||gout||gout|| ") == ["Hannah Haddad", "gout"]
    assert leakage("Hannah Haddad||gout||gout", "Meal ideas for HANNAH HADDAD please") == 0.5
    assert leakage("Hannah Haddad||gout", "meal ideas for a person with Gout, named hannah haddad") == 1.0
    assert leakage("Hannah Haddad||gout", "meal ideas for an adult") == 0.0
    assert leakage("", "anything") == 0.0


def test_offline_score_has_papillons_shape_and_a_trace_asks_for_a_perfect_score() -> None:
    perfect = dspy.Prediction(llm_request="meal ideas for an adult", response=GOLD)
    assert papillon_offline(example(), perfect) == 1.0
    assert papillon_offline(example(), perfect, trace=[]) is True
    leaky = dspy.Prediction(llm_request="meal ideas for Hannah Haddad", response=GOLD)
    assert papillon_offline(example(), leaky) == pytest.approx((1.0 + 0.5) / 2)
    assert papillon_offline(example(), leaky, trace=[]) is False
    empty = dspy.Prediction(llm_request="", response="")
    assert papillon_offline(example(), empty) == 0.5  # no quality, no leakage


def test_offline_quality_grades_text_a_tiny_model_can_move_toward() -> None:
    """Gibberish < English-ish words < an on-topic answer < the gold answer: a graded, non-zero signal."""
    gibberish = trigram_f1("zq9x7 k2v 0xq 77zz qqk", GOLD)
    english = trigram_f1("the plan with the best of the week", GOLD)
    on_topic = trigram_f1("a meal plan for gout: vegetables and protein", GOLD)
    assert gibberish < english < on_topic < trigram_f1(GOLD, GOLD) == 1.0
    assert 0.0 < english
    # Length matters too: a run of the right words, far too long, scores below a fitting answer.
    assert trigram_f1(GOLD * 8, GOLD) < trigram_f1(GOLD, GOLD)


def judge(answers: dict[str, dict[str, Any]]) -> DummyLM:
    """A scripted judge (DSPy's DummyLM): the real judge is a paid external API (gpt-4.1-mini in the tutorial)."""
    return DummyLM(answers)


@pytest.mark.parametrize(
    ("new_vs_gold", "gold_vs_new", "quality"),
    [(True, False, 1.0), (False, True, 0.0), (False, False, 1.0), (True, True, 1.0)],
)
def test_compute_overall_score_quality_is_j1_or_an_inconsistent_judge(
    new_vs_gold: bool, gold_vs_new: bool, quality: float
) -> None:
    pred = dspy.Prediction(llm_request="meal plan for Hannah Haddad", response="NEW RESPONSE")
    lm = judge(
        {
            "[[ ## response_A ## ]]\nNEW RESPONSE": {"reasoning": "r", "judgment": new_vs_gold},
            f"[[ ## response_A ## ]]\n{GOLD}": {"reasoning": "r", "judgment": gold_vs_new},
            "[[ ## pii ## ]]": {"reasoning": "r", "num_pii_leaked": 1},
        }
    )
    metric = make_compute_overall_score(lm)
    score = metric(example(), pred)
    assert score == pytest.approx((quality + (1 - 1 / 2)) / 2)  # 1 of the 2 distinct units leaked
    assert metric(example(), pred, trace=[]) is False


def test_compute_overall_score_with_a_trace_is_true_only_for_a_perfect_rollout() -> None:
    pred = dspy.Prediction(llm_request="meal plan", response="NEW RESPONSE")
    lm = judge(
        {
            "[[ ## response_A ## ]]\nNEW RESPONSE": {"reasoning": "r", "judgment": True},
            f"[[ ## response_A ## ]]\n{GOLD}": {"reasoning": "r", "judgment": False},
            "[[ ## pii ## ]]": {"reasoning": "r", "num_pii_leaked": 0},
        }
    )
    assert make_compute_overall_score(lm)(example(), pred, trace=[]) is True


# --------------------------------------------------------------------------- registry


@pytest.fixture
def user_module() -> Iterator[types.ModuleType]:
    """A user's module with a program and a metric, importable by 'module:attr'."""
    module = types.ModuleType("user_grpo_module")

    class QA(dspy.Module):
        def __init__(self, untrusted_model: Any = None) -> None:
            super().__init__()
            self.answer = dspy.Predict("question -> answer")
            self.untrusted_model = untrusted_model

        def forward(self, question: str) -> dspy.Prediction:
            return self.answer(question=question)

    def exact(example: Any, pred: Any, trace: Any = None) -> float:
        return float(example.answer == pred.answer)

    module.QA = QA  # type: ignore[attr-defined]
    module.exact = exact  # type: ignore[attr-defined]
    module.not_callable = 42  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        del sys.modules[module.__name__]


def test_builtin_and_import_path_metrics_resolve(user_module: types.ModuleType) -> None:
    assert resolve_metric("papillon_offline") is papillon_offline
    assert resolve_metric("user_grpo_module:exact") is user_module.exact
    assert resolve_metric("compute_overall_score", judge_lm=judge({})).__name__ == "compute_overall_score"
    with pytest.raises(ValueError, match="needs a judge"):
        resolve_metric("compute_overall_score")
    with pytest.raises(ValueError, match="neither a built-in name nor a 'module:attr'"):
        resolve_metric("nonsense")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        resolve_metric("user_grpo_module:missing")
    with pytest.raises(TypeError, match="not a callable"):
        resolve_metric("user_grpo_module:not_callable")


def test_programs_resolve_with_the_untrusted_model_and_without_demos(user_module: types.ModuleType) -> None:
    untrusted = judge({})
    papillon = resolve_program("papillon", untrusted_lm=untrusted)
    assert isinstance(papillon, PAPILLON) and papillon.untrusted_model is untrusted
    assert [name for name, _ in papillon.named_predictors()] == [CRAFT, RESPOND]
    custom = resolve_program("user_grpo_module:QA", untrusted_lm=untrusted)
    assert custom.untrusted_model is untrusted

    instance = user_module.QA()
    instance.answer.demos = [dspy.Example(question="1+1?", answer="2")]
    user_module.with_demos = instance  # type: ignore[attr-defined]
    resolved = resolve_program("user_grpo_module:with_demos")
    assert resolved is not instance and resolved.answer.demos == []
    assert instance.answer.demos, "the user's object is left alone"
    with pytest.raises(ValueError, match="needs an untrusted model"):
        resolve_program("papillon")
