"""The optimized program compile() and load() return: the student, its trained predictors on the served
adapter, asked in the format the job's policy was trained with."""

from __future__ import annotations

import dspy

from grpo_operator.client.served import ServedFormat, ServedResult, bind_result, served_lm_class
from grpo_trainer.dspy.policy_adapters import PolicyJSONAdapter


class Seen(dspy.Module):
    """Records the adapter DSPy would use for its predictor's calls."""

    def __init__(self, untrusted_model=None):
        self.answer = dspy.Predict("question -> answer")
        self.judge = dspy.Predict("answer -> verdict")
        self.judge.lm = dspy.LM("openai/gpt-4.1-mini")
        self.untrusted_model = untrusted_model
        self.adapters: list[object] = []

    def forward(self, question):
        self.adapters.append(dspy.settings.adapter)
        return dspy.Prediction(answer=question)


def served(fmt: ServedFormat) -> ServedResult:
    return ServedResult(
        job="seen-1",
        namespace=None,
        result={"adapter": "result/adapter", "valScore": 0.9},
        url="http://127.0.0.1:9/v1",
        model="seen-1",
        base_model="base",
        api_key="k",
        trained=("answer",),
        format=fmt,
    )


def test_trained_predictors_call_the_served_adapter_and_a_local_model_standing_in_for_the_untrusted_one_the_base() -> (
    None
):
    local = dspy.LM("openai/local-model", temperature=0.7, max_tokens=99)
    student = Seen(untrusted_model=local)
    student.answer.lm = local
    program = bind_result(student, served(ServedFormat()))
    assert isinstance(program.answer.lm, served_lm_class()) and program.answer.lm.model == "openai/seen-1"
    assert (
        program.answer.lm.kwargs["api_base"] == "http://127.0.0.1:9/v1"
        and program.answer.lm.kwargs["temperature"] == 0.7
    )
    assert program.judge.lm.model == "openai/gpt-4.1-mini"  # its own LM, not trained: kept
    assert program.untrusted_model.model == "openai/base"  # the local model stood in for it, as in training
    assert student.answer.lm is local and type(program) is Seen  # the student is untouched; chat: no wrapper


def test_a_job_trained_in_another_format_is_asked_in_it() -> None:
    student = Seen()
    student.answer.lm = dspy.LM("openai/local-model")
    program = bind_result(student, served(ServedFormat(adapter="json", constrain=True, max_tokens=256)))
    assert isinstance(program, Seen) and type(program) is not Seen
    program(question="q")
    adapter = program.adapters[-1]
    assert isinstance(adapter, PolicyJSONAdapter) and adapter.constrain_format
    assert adapter.drives == (served_lm_class(),) and program.answer.lm.kwargs["max_tokens"] == 256
    assert dspy.settings.adapter is None  # only inside the program's calls
