"""A finished job's result as the optimized program: the student with its trained predictors on the served adapter.

ArborGRPO's ``compile()`` updates the student's LM in place; here the trained
weights live in a vLLM server (the job's, kept serving by ``spec.serve``, or one the
local backend starts), so the optimized program is a copy of the student whose
trained predictors call that server under the job's name. Predictors with LMs of
their own keep them, as they did in training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from grpo_trainer.contract.hparams import GRPOArgs, TrainKwargs

# The LM settings a served copy keeps from the student's local LM (sampling, not the endpoint).
KEPT_LM_KWARGS = ("temperature", "max_tokens", "max_completion_tokens", "top_p", "stop")


@dataclass(frozen=True)
class ServedFormat:
    """How the job's policy wrote its outputs, so the served result is asked the same way: the DSPy adapter
    (``grpo.adapter``), the output constraint (``grpo.constrain_output_format``), the token limit."""

    adapter: str = "chat"
    constrain: bool = False
    max_tokens: Optional[int] = None

    @classmethod
    def of(cls, grpo: "GRPOArgs", train: "TrainKwargs") -> "ServedFormat":
        """From the job's ``grpo`` and ``trainKwargs`` (a GRPOJob spec's, or a trainer config's)."""
        return cls(grpo.adapter, grpo.constrain_output_format, train.max_completion_length)

    @property
    def needs_adapter(self) -> bool:
        """DSPy's default ChatAdapter asks as training did unless the job used another format or a constraint."""
        return self.adapter != "chat" or self.constrain


@functools.cache
def served_lm_class() -> type:
    """The ``dspy.LM`` class of served results (made on first use: dspy is imported only when needed)."""
    import dspy

    class ServedResultLM(dspy.LM):
        """An LM on a job's served result: the job's policy adapter formats its calls as in training."""

    return ServedResultLM


@dataclass
class ServedResult:
    """Where a finished job's result is served, and what it is."""

    job: str
    namespace: Optional[str]  # None: a local run
    result: Mapping[str, Any]  # status.result (adapter, step, valScore, baseModel, ...)
    url: str  # OpenAI base URL (…/v1) reachable from here
    model: str  # the name to ask for: the job's (its best adapter), or the base model's
    base_model: str  # the name the same server serves the base model under
    api_key: str
    trained: Sequence[str]  # the predictors the job trained
    format: ServedFormat = field(default_factory=ServedFormat)
    close: Callable[[], None] = field(default=lambda: None, repr=False)  # stops what serves it from here

    @property
    def val_score(self) -> Optional[float]:
        value = self.result.get("valScore")
        return float(value) if value is not None else None

    def lm(self, like: Any = None, *, base: bool = False) -> Any:
        """A ``dspy.LM`` on the served result (``base``: on the base model); ``like``: an LM whose sampling
        settings to keep."""
        import dspy

        kwargs = {
            k: v for k, v in (getattr(like, "kwargs", None) or {}).items() if k in KEPT_LM_KWARGS and v is not None
        }
        model = self.base_model if base else self.model
        if base:
            return dspy.LM(f"openai/{model}", api_base=self.url, api_key=self.api_key, model_type="chat", **kwargs)
        if self.format.max_tokens is not None:
            kwargs.setdefault("max_tokens", self.format.max_tokens)
        return served_lm_class()(
            f"openai/{model}", api_base=self.url, api_key=self.api_key, model_type="chat", **kwargs
        )

    def adapter(self) -> Any:
        """The DSPy adapter that asks the served result as the job's policy was asked in training."""
        from grpo_trainer.dspy.policy_adapters import policy_adapter

        return policy_adapter(self.format.adapter, constrain_format=self.format.constrain, drives=(served_lm_class(),))


def _asked_as_trained(program: Any, adapter: Any) -> None:
    """Run the program's calls with the job's adapter. DSPy takes the adapter from its settings, not per
    predictor, so the copy's class gains a ``__call__`` that sets it (the program's own code is unchanged;
    ``isinstance`` still holds)."""
    import dspy

    base = type(program)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        with dspy.context(adapter=adapter):
            return base.__call__(self, *args, **kwargs)

    async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        with dspy.context(adapter=adapter):
            return await base.acall(self, *args, **kwargs)

    program.__class__ = type(
        base.__name__, (base,), {"__call__": __call__, "acall": acall, "__module__": base.__module__}
    )


def bind_result(student: Any, served: ServedResult) -> Any:
    """A deep copy of ``student`` whose trained predictors use the served result.

    An LM attribute of the program that is the trained predictors' own LM (PAPILLON's untrusted model when
    the base model stands in for it, as the job's default does) is pointed at the base model the same server
    serves, as it was in training."""
    if not served.url:
        from grpo_operator.client.errors import NotServed

        raise NotServed(
            f"job {served.job} does not serve its result (serve is off); its adapter is at "
            f"{served.result.get('adapter')} "
            "on the job's volume: set spec.serve.enabled: true and load(...) it"
        )
    program = student.deepcopy()
    predictors = dict(program.named_predictors())
    missing = [name for name in served.trained if name not in predictors]
    if missing:
        raise ValueError(
            f"the program has no predictor {', '.join(missing)}, which job {served.job} trained; pass the program "
            "the job was compiled from"
        )
    local = next((predictors[n].lm for n in served.trained if predictors[n].lm is not None), None)
    lm = served.lm(like=local)
    for name in served.trained:
        predictors[name].lm = lm
    if local is not None:
        for attr, value in vars(program).items():
            if value is local:  # deepcopy keeps the sharing: this attribute was the local model itself
                setattr(program, attr, served.lm(like=local, base=True))
    if served.format.needs_adapter:
        _asked_as_trained(program, served.adapter())
    return program
