"""What ``compile()`` reads from the student program it is handed.

The trainer builds the program afresh from its class, so the student is looked at
through that lens: a fresh instance shows which predictors the class binds to LMs
of its own (those stay on them and are not trained) and which it leaves unbound
(those the trainer binds to the policy, the local model being trained). In the
student, the unbound ones carry the local model (``papillon.set_lm(local_lm)``),
which names the base model to train; an LM handed to the constructor as
``untrusted_model`` (PAPILLON's delegate) becomes the job's ``untrustedModel``.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Optional

import dspy

from grpo_operator.client.errors import BundleError
from grpo_trainer.dspy.state import program_state

UNTRUSTED_PARAM = "untrusted_model"  # what grpo_trainer.dspy.registry passes the external LM as
# litellm model prefixes that name a provider, not the model; Arbor's and ours name a local model.
PROVIDER_PREFIXES = ("openai/", "hosted_vllm/", "huggingface/", "local/")
LOCAL_MODEL_PREFIXES = ("arbor:", "local:")


@dataclass(frozen=True)
class Student:
    """The student program as compile() ships it."""

    program_class: type
    takes_untrusted: bool  # the constructor has an ``untrusted_model`` parameter
    trained: tuple[str, ...]  # predictors the trainer binds to the policy
    own_lms: dict[str, str]  # predictor -> the model of the LM its class gives it (not trained)
    local_lm: Optional[dspy.BaseLM]  # the LM the trained predictors share in the student
    untrusted_lm: Optional[dspy.BaseLM]
    state: dict[str, Any]  # the student's DSPy state, LMs left out


def accepts(factory: Any, parameter: str) -> bool:
    """Whether a class (its ``__init__``) or function takes ``parameter``, as the trainer's registry checks."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return parameter in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _untrusted_of(student: dspy.Module, bound: set[int]) -> Optional[dspy.BaseLM]:
    named = getattr(student, UNTRUSTED_PARAM, None)
    if isinstance(named, dspy.BaseLM):
        return named
    loose = [v for v in vars(student).values() if isinstance(v, dspy.BaseLM) and id(v) not in bound]
    return loose[0] if len(loose) == 1 else None


def analyse(student: dspy.Module) -> Student:
    """Read the student; raises BundleError when the trainer could not rebuild it the same way."""
    if not isinstance(student, dspy.Module):
        raise BundleError(f"the student is a {type(student).__name__}, not a dspy.Module")
    cls = type(student)
    predictors = dict(student.named_predictors())
    if not predictors:
        raise BundleError(f"the student {cls.__name__} has no predictors to train")
    bound = {id(p.lm) for p in predictors.values() if p.lm is not None}
    takes_untrusted = accepts(cls, UNTRUSTED_PARAM)
    untrusted = _untrusted_of(student, bound) if takes_untrusted else None
    try:
        fresh = cls(**{UNTRUSTED_PARAM: untrusted}) if takes_untrusted else cls()
    except TypeError as exc:
        raise BundleError(
            f"the trainer builds the student afresh as {cls.__name__}() (passing {UNTRUSTED_PARAM}= when the class "
            f"takes it), and that fails: {exc}. Give the constructor's other parameters defaults"
        ) from None
    own = {name: p.lm for name, p in fresh.named_predictors() if p.lm is not None}
    trained = tuple(name for name in predictors if name not in own)
    if not trained:
        raise BundleError(
            f"every predictor of {cls.__name__} gets an LM of its own from its constructor ({', '.join(own)}): "
            "nothing is left for the local model to learn. Leave the predictors to train without an LM"
        )
    local = {id(predictors[n].lm): predictors[n].lm for n in trained if predictors[n].lm is not None}
    if len(local) > 1:
        raise BundleError(
            f"the predictors to train ({', '.join(trained)}) use {len(local)} different LMs; GRPO trains one local "
            "model: bind them to one with student.set_lm(local_lm)"
        )
    local_lm = next(iter(local.values()), None) or dspy.settings.lm
    return Student(
        program_class=cls,
        takes_untrusted=takes_untrusted,
        trained=trained,
        own_lms={n: str(getattr(lm, "model", lm)) for n, lm in own.items()},
        local_lm=local_lm,
        untrusted_lm=untrusted if untrusted is not None and untrusted is not local_lm else None,
        state=program_state(student),
    )


def model_name(lm: dspy.BaseLM) -> str:
    """The model an LM names, without its provider prefix (``openai/arbor:Qwen/X`` -> ``Qwen/X``)."""
    name = str(getattr(lm, "model", ""))
    for prefix in PROVIDER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    for prefix in LOCAL_MODEL_PREFIXES:
        name = name.removeprefix(prefix)
    return name


@dataclass(frozen=True)
class ExternalEndpoint:
    """An LM of the student as the job's ``untrustedModel`` (an OpenAI-compatible endpoint) and its key."""

    model: str
    base_url: Optional[str]
    api_key: Optional[str]  # from the LM or the environment; goes into a Secret, never the job
    temperature: Optional[float]
    max_tokens: Optional[int]


def external_endpoint(lm: dspy.BaseLM, role: str) -> ExternalEndpoint:
    """The endpoint an LM calls; only OpenAI-compatible ones (the trainer's external LMs speak that API)."""
    model = str(getattr(lm, "model", ""))
    provider, sep, rest = model.partition("/")
    if not sep or provider != "openai":
        raise BundleError(
            f"the {role} LM {model!r} is not an OpenAI-compatible endpoint ('openai/<model>'); the trainer's "
            "external LMs speak the OpenAI API: use a gateway that does (LiteLLM proxy, vLLM, OpenRouter) "
            "and name it 'openai/<model>' with api_base="
        )
    kwargs: dict[str, Any] = dict(getattr(lm, "kwargs", {}) or {})
    base_url = kwargs.get("api_base") or kwargs.get("base_url")
    key = kwargs.get("api_key") or (None if base_url else os.environ.get("OPENAI_API_KEY"))
    max_tokens = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
    return ExternalEndpoint(
        model=rest,
        base_url=base_url,
        api_key=key,
        temperature=kwargs.get("temperature"),
        max_tokens=int(max_tokens) if max_tokens else None,
    )
