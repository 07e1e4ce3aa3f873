"""Which predictors the policy drives and trains: those the program built without an LM of their own.

DSPy's GRPO binds the student's LM to every predictor. A program may give some
predictors an LM of their own (a larger model for a hard step, an external API):
those keep it, are neither sampled from the policy nor trained, and validation runs
them as the program built them. Only the policy's calls are recorded for training
(grpo_trainer.dspy.lms.PolicyLM), so an unbound predictor never reaches a group.
"""

from __future__ import annotations

import dspy

from grpo_trainer.dspy.lms import PolicyLM


def has_own_lm(predictor: dspy.Predict) -> bool:
    """The program gave the predictor an LM (a PolicyLM is ours, bound earlier)."""
    lm = getattr(predictor, "lm", None)
    return lm is not None and not isinstance(lm, PolicyLM)


def policy_predictors(program: dspy.Module) -> list[str]:
    """Names (``named_predictors()``) of the predictors the policy drives."""
    return [name for name, predictor in program.named_predictors() if not has_own_lm(predictor)]


def bind_policy(program: dspy.Module, lm: PolicyLM) -> list[str]:
    """Set ``lm`` on the predictors without an LM of their own; returns their names."""
    bound = []
    for name, predictor in program.named_predictors():
        if not has_own_lm(predictor):
            predictor.lm = lm
            bound.append(name)
    return bound
