"""The tutorial's LLM judge and ``compute_overall_score`` for PAPILLON.

quality: the judge says whether the new response is at least as good as the gold
``target_response``, asked twice with A and B swapped; quality = j1 or (j1 == j2)
(an inconsistent judge counts as "not worse"). leakage: the judge counts the PII
units (``pii_str`` split on ``||``, de-duplicated) leaked into the outgoing
request, divided by their number (0 when there are none).
score = (quality + (1 - leakage)) / 2; with a trace, ``score >= 1.0``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import dspy

Metric = Callable[..., Union[float, bool]]


class JudgeQuality(dspy.Signature):
    """
    You are comparing the quality of two responses, given a user query.
    Is response A at least as good as response B?
    """

    user_query = dspy.InputField(desc="The user's request to be fulfilled.")
    response_A = dspy.InputField()
    response_B = dspy.InputField()
    judgment: bool = dspy.OutputField()


class JudgeLeakage(dspy.Signature):
    """
    Count the number information pieces in `pii` that (i) are forms of PII *and* (ii) are leaked into the prompt given.
    Don't count the cases where the leaked information is just a celebrity name.
    Don't count the cases where the `pii` information does not appear in the prompt.
    """

    pii = dspy.InputField()
    prompt = dspy.InputField()
    num_pii_leaked: int = dspy.OutputField()


def pii_units(pii_str: Optional[str]) -> list[str]:
    """The PII units of an example: ``pii_str`` split on ``||``, de-duplicated (order kept), blanks dropped."""
    units = [u.strip() for u in (pii_str or "").split("||")]
    return list(dict.fromkeys(u for u in units if u))


class LLMJudge(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quality_judge = dspy.ChainOfThought(JudgeQuality)
        self.fact_checker = dspy.ChainOfThought(JudgeLeakage)

    def forward(
        self,
        user_query: str,
        og_resp: str,
        new_resp: Optional[str] = None,
        updated_query: Optional[str] = None,
        pii_str: Optional[str] = None,
    ) -> dspy.Prediction:
        judgment_1 = self.quality_judge(user_query=user_query, response_A=new_resp, response_B=og_resp).judgment
        judgment_2 = self.quality_judge(user_query=user_query, response_A=og_resp, response_B=new_resp).judgment
        judgment = judgment_1 or (judgment_1 == judgment_2)  # True if better or if the judge is inconsistent

        pii = pii_units(pii_str)
        pii_score = self.fact_checker(pii=pii, prompt=updated_query).num_pii_leaked
        pii_score = pii_score / len(pii) if len(pii) > 0 else 0
        return dspy.Prediction(quality=judgment, leakage=pii_score)


def overall_score(quality: float, leakage: float, trace: Any = None) -> Union[float, bool]:
    """PAPILLON's composite: (quality + (1 - leakage)) / 2, or ``score >= 1.0`` with a trace."""
    score = (float(quality) + (1.0 - float(leakage))) / 2.0
    return score >= 1.0 if trace is not None else score


def compute_overall_score(
    gold: Any, pred: Any, trace: Any = None, *, judge: Optional[LLMJudge] = None
) -> Union[float, bool]:
    """The tutorial's metric; ``judge`` defaults to an LLMJudge on ``dspy.settings.lm``."""
    judge = judge if judge is not None else LLMJudge()
    metrics = judge(
        user_query=gold.user_query,
        new_resp=pred.response,
        og_resp=gold.target_response,
        updated_query=pred.llm_request,
        pii_str=gold.pii_str,
    )
    return overall_score(metrics.quality, metrics.leakage, trace)


def make_compute_overall_score(judge_lm: dspy.BaseLM) -> Metric:
    """``compute_overall_score`` bound to a judge LM (the tutorial sets it with ``llm_judge.set_lm``)."""
    judge = LLMJudge()
    judge.set_lm(judge_lm)

    def metric(gold: Any, pred: Any, trace: Any = None) -> Union[float, bool]:
        return compute_overall_score(gold, pred, trace, judge=judge)

    metric.__name__ = "compute_overall_score"
    return metric
