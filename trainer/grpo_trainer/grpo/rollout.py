"""Rollouts: program executions with their rewards and the exact tokens the policy sampled.

:class:`ExampleSampler` picks each step's examples from a per-epoch seeded
shuffle and can be saved and restored exactly (checkpoint/resume).
:func:`run_rollouts` runs ``num_samples_per_input`` executions of the program per
example, ``num_threads`` at a time; every execution records its policy calls
(:mod:`grpo_trainer.dspy.lms`) and gets one reward for the whole rollout:

* a policy output that does not parse -> ``format_failure_score`` ("format");
* an external call (untrusted model, judge) that failed after its retries, a
  program that raised, or a metric that raised or returned a non-number ->
  ``failure_score`` ("external" / "program" / "metric");
* otherwise the metric's value (``trace=None``: a float).

A failed policy call (vLLM down, adapter not served) is not scored: the batch
raises :class:`PolicyCallError` so the loop can wait for vLLM and redo the step.
"""

from __future__ import annotations

import contextvars
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import dspy

from grpo_trainer.dspy.lms import LMCall, PolicyLM, RolloutRecord, derive_seed, recording
from grpo_trainer.dspy.policy_adapters import PolicyAdapter, PolicyChatAdapter
from grpo_trainer.dspy.policy_binding import bind_policy

logger = logging.getLogger(__name__)

FAILURE_KINDS = ("format", "policy", "external", "program", "metric")


# --------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class SamplerState:
    seed: int
    epoch: int
    position: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class ExampleSampler:
    """Example indices from a stream of per-epoch shuffles (seed, epoch) -> permutation.

    A batch takes the next ``k`` distinct indices of the stream; an index already
    in the batch (possible where one epoch ends and the next begins) is skipped.
    The state is three integers, so resuming from a checkpoint continues the
    very same stream.
    """

    def __init__(self, num_examples: int, seed: int = 0, *, epoch: int = 0, position: int = 0) -> None:
        if num_examples < 1:
            raise ValueError("the sampler needs at least one example")
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = epoch
        self.position = position
        self._order: Optional[list[int]] = None

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_examples))
        random.Random(derive_seed("epoch-shuffle", self.seed, epoch)).shuffle(order)
        return order

    def _next(self) -> int:
        if self.position >= self.num_examples:
            self.epoch += 1
            self.position = 0
            self._order = None
        if self._order is None:
            self._order = self._permutation(self.epoch)
        index = self._order[self.position]
        self.position += 1
        return index

    def next_batch(self, k: int) -> list[int]:
        """The next ``k`` example indices (distinct when ``k`` <= the number of examples)."""
        batch: list[int] = []
        while len(batch) < k:
            index = self._next()
            if index in batch and k <= self.num_examples:
                continue
            batch.append(index)
        return batch

    def state(self) -> SamplerState:
        return SamplerState(seed=self.seed, epoch=self.epoch, position=self.position)

    def state_dict(self) -> dict[str, int]:
        return self.state().to_dict()

    @classmethod
    def from_state(cls, num_examples: int, state: Mapping[str, int]) -> "ExampleSampler":
        return cls(num_examples, int(state["seed"]), epoch=int(state["epoch"]), position=int(state["position"]))


# --------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One execution of the program on one example."""

    example_index: int
    sample_index: int
    reward: float
    failure: Optional[str]  # None or one of FAILURE_KINDS
    calls: list[LMCall]
    prediction: dict[str, Any] = field(default_factory=dict)
    score: Optional[float] = None  # the metric's own value, when it ran
    error: Optional[str] = None
    policy_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


Metric = Callable[..., Any]


class PolicyCallError(RuntimeError):
    """Policy calls failed (vLLM down, adapter not served): the batch is not trainable; retry the step."""

    def __init__(self, message: str, failed_rollouts: int) -> None:
        super().__init__(message)
        self.failed_rollouts = failed_rollouts


def _run_one(
    program: dspy.Module,
    metric: Metric,
    example: dspy.Example,
    example_index: int,
    sample_index: int,
    predictor_names: Mapping[int, str],
    seed: Optional[int],
    adapter: PolicyAdapter,
    failure_score: float,
    format_failure_score: float,
) -> Rollout:
    started = time.monotonic()
    rollout_seed = None if seed is None else derive_seed(seed, example_index, sample_index)
    record = RolloutRecord(seed=rollout_seed, predictor_names=predictor_names)
    prediction: Any = None
    score: Optional[float] = None
    error: Optional[str] = None
    with recording(record), dspy.context(adapter=adapter, trace=[]):
        try:
            prediction = program(**example.inputs())
        except Exception as exc:  # a program that does not catch its own failures
            error = f"program: {type(exc).__name__}: {exc}"
        if error is None and not (record.format_failed or record.external_errors or record.policy_errors):
            try:
                value = metric(example, prediction, None)
                score = float(value)
                if not math.isfinite(score):
                    raise ValueError(f"metric returned {value!r}")
            except Exception as exc:
                score = None
                error = f"metric: {type(exc).__name__}: {exc}"
    failure: Optional[str]
    if record.format_failed:
        failure, reward = "format", format_failure_score
    elif record.policy_errors:
        failure, reward = "policy", failure_score
        error = "; ".join(record.policy_errors)
    elif record.external_errors:
        failure, reward = "external", failure_score
        error = "; ".join(record.external_errors)
    elif score is None:
        failure, reward = ("program" if prediction is None else "metric"), failure_score
    else:
        failure, reward = None, score
    return Rollout(
        example_index=example_index,
        sample_index=sample_index,
        reward=reward,
        failure=failure,
        calls=record.calls,
        prediction=_prediction_fields(prediction),
        score=score,
        error=error,
        seconds=time.monotonic() - started,
        policy_errors=list(record.policy_errors),
    )


def _prediction_fields(prediction: Any) -> dict[str, Any]:
    if prediction is None:
        return {}
    try:
        return dict(prediction.items())
    except Exception:
        return {"value": repr(prediction)}


def predictor_names(program: dspy.Module) -> dict[int, str]:
    """id(predictor) -> its named_predictors() name (the group key of its calls)."""
    return {id(p): name for name, p in program.named_predictors()}


def run_rollouts(
    program: dspy.Module,
    metric: Metric,
    examples: Sequence[dspy.Example],
    num_samples_per_input: int,
    num_threads: int,
    lm: Optional[PolicyLM] = None,
    failure_score: float = 0.0,
    format_failure_score: float = -1.0,
    *,
    example_indices: Optional[Sequence[int]] = None,
    seed: Optional[int] = None,
    adapter: Optional[PolicyAdapter] = None,
) -> list[Rollout]:
    """``num_samples_per_input`` rollouts of ``program`` per example, ``num_threads`` at a time.

    ``lm`` (the PolicyLM) is set on the predictors without an LM of their own when given
    (grpo_trainer.dspy.policy_binding); ``adapter`` formats the policy's prompts (default: chat).
    ``example_indices`` are the examples' ids (e.g. from :class:`ExampleSampler`);
    default 0..n-1. With ``seed`` every policy call gets a vLLM seed derived from
    (seed, example id, sample index, predictor, invocation): pass a new seed per
    step (e.g. ``derive_seed(config_seed, step)``) for fresh yet reproducible
    samples. Results come back ordered by (example, sample).

    Raises :class:`PolicyCallError` when any policy call failed (after DSPy's
    retries): such a batch would score rollouts the policy never sampled.
    """
    if example_indices is None:
        example_indices = list(range(len(examples)))
    if len(example_indices) != len(examples):
        raise ValueError("example_indices must match examples one to one")
    if lm is not None:
        bind_policy(program, lm)
    names = predictor_names(program)
    adapter = adapter or PolicyChatAdapter()
    jobs = [
        (example, index, sample)
        for example, index in zip(examples, example_indices, strict=True)
        for sample in range(num_samples_per_input)
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, num_threads), thread_name_prefix="rollout") as pool:
        futures = [
            # A fresh copy of the caller's context per job: dspy.context overrides
            # reach the worker, and each rollout's record stays its own.
            pool.submit(
                contextvars.copy_context().run,
                _run_one,
                program,
                metric,
                example,
                index,
                sample,
                names,
                seed,
                adapter,
                failure_score,
                format_failure_score,
            )
            for example, index, sample in jobs
        ]
        rollouts = [f.result() for f in futures]
    broken = [r for r in rollouts if r.policy_errors]
    if broken:
        raise PolicyCallError(
            f"{len(broken)} of {len(rollouts)} rollouts could not sample the policy: {broken[0].policy_errors[0]}",
            failed_rollouts=len(broken),
        )
    failures = {kind: sum(r.failure == kind for r in rollouts) for kind in FAILURE_KINDS}
    logger.info(
        "rollouts done",
        extra={
            "rollouts": len(rollouts),
            "seconds": round(time.monotonic() - started, 3),
            "failures": failures,
            "reward_mean": sum(r.reward for r in rollouts) / max(1, len(rollouts)),
        },
    )
    return rollouts
