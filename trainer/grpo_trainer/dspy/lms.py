"""The LMs of a run: the policy served by vLLM, and the external untrusted model and judge.

Training must see exactly the tokens vLLM sampled. :class:`PolicyLM` asks vLLM for
token ids and logprobs on every call (``logprobs=True``,
``extra_body={"return_token_ids": True}``) and records, for the rollout that is
running in the calling thread, the prompt token ids, sampled completion ids,
per-token logprobs and finish reason, tagged with the DSPy predictor that made the
call and its invocation index. Nothing is ever re-tokenised.

Recording is per rollout through a context variable (:func:`recording`), so
rollouts running ``num_threads`` at a time never mix their calls. External LMs
note their failures on the same record, so a failed call scores the rollout
``failure_score`` even when the program swallows the exception (PAPILLON does).

How the policy's prompts are formatted and its outputs parsed is
grpo_trainer.dspy.policy_adapters.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

# litellm fetches a model cost map at import; offline that costs ~7 s of retries per process.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from dspy.dsp.utils.settings import settings

from grpo_trainer.contract.config import LMEndpoint, VLLMEndpoint

logger = logging.getLogger(__name__)

# What litellm's OpenAI client sends to a server that takes no key (it needs one); the job's vLLM takes its own.
NO_KEY = "EMPTY"
# Calls kept on each LM for `inspect_history` (the rollout record keeps what training needs).
HISTORY_SIZE = 32


@dataclass
class LMCall:
    """One sampled completion of the policy, as vLLM produced it."""

    predictor: str
    invocation: int
    model: str
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str
    parse_failed: bool = False

    @property
    def truncated(self) -> bool:
        """The completion hit the token limit (no EOS): its end is not the policy's choice."""
        return self.finish_reason == "length"


@dataclass
class RolloutRecord:
    """Everything the LMs note while one rollout runs."""

    seed: Optional[int] = None
    predictor_names: Mapping[int, str] = field(default_factory=dict)
    calls: list[LMCall] = field(default_factory=list)
    external_errors: list[str] = field(default_factory=list)
    policy_errors: list[str] = field(default_factory=list)
    _invocations: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def next_invocation(self, predictor: str) -> int:
        with self._lock:
            n = self._invocations.get(predictor, 0)
            self._invocations[predictor] = n + 1
            return n

    def add_call(self, call: LMCall) -> None:
        with self._lock:
            self.calls.append(call)

    def add_external_error(self, message: str) -> None:
        with self._lock:
            self.external_errors.append(message)

    def add_policy_error(self, message: str) -> None:
        with self._lock:
            self.policy_errors.append(message)

    @property
    def format_failed(self) -> bool:
        return any(c.parse_failed for c in self.calls)


_RECORD: ContextVar[Optional[RolloutRecord]] = ContextVar("grpo_rollout_record", default=None)


@contextlib.contextmanager
def recording(record: RolloutRecord) -> Iterator[RolloutRecord]:
    """Make ``record`` collect the LM calls of the current thread (context)."""
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def current_record() -> Optional[RolloutRecord]:
    return _RECORD.get()


def _keep_recent(history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Append to a short per-LM history instead of DSPy's process-wide and per-module ones.

    DSPy would also append every entry (full responses; for the policy, token ids
    and logprobs) to a global history of 10,000 entries and to each calling
    module's history: for a long run that is memory for nothing.
    """
    if len(history) >= HISTORY_SIZE:
        history.pop(0)
    history.append(entry)


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (same parts, same seed, in every process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Field of a litellm/OpenAI object or a plain dict (vLLM's extra fields land on either)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    value = getattr(obj, name, None)
    if value is not None:
        return value
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get(name, default)


class PolicyLM(dspy.LM):
    """The trained model on the job's vLLM server, under the current adapter name.

    Calls go through litellm's OpenAI route (``openai/<adapter>`` with
    ``api_base``); DSPy's cache is off, so every rollout samples afresh. When a
    rollout record carries a seed, each call gets a per-(predictor, invocation)
    vLLM seed, which makes a rollout batch reproducible.
    """

    def __init__(
        self,
        base_url: str,
        adapter: str,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        max_tokens: Optional[int] = None,
        timeout: float = 600.0,
        num_retries: int = 3,
        api_key: Optional[str] = None,
    ) -> None:
        extra_body: dict[str, Any] = {"return_token_ids": True, "top_k": top_k}
        if min_p:
            extra_body["min_p"] = min_p
        if repetition_penalty != 1.0:
            extra_body["repetition_penalty"] = repetition_penalty
        options: dict[str, Any] = {}
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        super().__init__(
            model=f"openai/{adapter}",
            model_type="chat",
            temperature=temperature,
            cache=False,
            num_retries=num_retries,
            engine="litellm",
            api_base=base_url,
            api_key=api_key or NO_KEY,
            timeout=timeout,
            logprobs=True,
            top_p=top_p,
            extra_body=extra_body,
            **options,
        )
        self._local = threading.local()

    @classmethod
    def from_config(cls, endpoint: VLLMEndpoint, adapter: str, train: Any) -> "PolicyLM":
        """From the trainer config's vLLM endpoint and TrainKwargs (sampling settings)."""
        return cls(
            endpoint.base_url,
            adapter,
            temperature=train.temperature,
            top_p=train.top_p,
            top_k=train.top_k,
            min_p=train.min_p,
            repetition_penalty=train.repetition_penalty,
            max_tokens=train.max_completion_length,
            timeout=endpoint.request_timeout_seconds,
            api_key=endpoint.api_key(),
        )

    @property
    def adapter(self) -> str:
        return self.model.split("/", 1)[1]

    def set_adapter(self, name: str) -> None:
        """Sample from another served name (``policy-vN``, or the base model) from the next call on."""
        self.model = f"openai/{name}"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def copy(self, **kwargs: Any) -> "PolicyLM":
        new = super().copy(**kwargs)
        new._local = threading.local()
        return new

    def _caller(self, record: Optional[RolloutRecord]) -> str:
        """Name of the innermost dspy.Predict on the call stack (named_predictors() name when known)."""
        names = record.predictor_names if record is not None else {}
        for module in reversed(settings.caller_modules or []):
            if id(module) in names:
                return names[id(module)]
            if isinstance(module, dspy.Predict):
                return type(module).__name__
        return ""

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        record = _RECORD.get()
        predictor = self._caller(record)
        invocation = record.next_invocation(predictor) if record is not None else 0
        if record is not None and record.seed is not None and "seed" not in kwargs:
            kwargs["seed"] = derive_seed(record.seed, predictor, invocation)
        self._local.entry = None
        try:
            outputs = super().__call__(prompt, messages=messages, **kwargs)
            entry = self._local.entry
        except Exception as exc:
            # Programs may swallow it (PAPILLON does); the rollout must not be scored as if sampled.
            if record is not None:
                record.add_policy_error(f"{self.model}: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._local.entry = None
        if entry is None:
            raise RuntimeError(
                "PolicyLM got no response to record (dspy.settings.disable_history is on?); "
                "rollouts need it to capture sampled token ids"
            )
        calls = self._calls(entry, predictor, invocation)
        if record is not None:
            for call in calls:
                record.add_call(call)
        return outputs

    def _check_truncation(self, results: Any) -> None:
        """Silent: truncation is recorded per call (LMCall.truncated), not warned about per request."""

    def update_history(self, entry: dict[str, Any]) -> None:
        """Capture the raw response for this thread's call; keep only a short local history."""
        self._local.entry = entry
        _keep_recent(self.history, entry)

    def _calls(self, entry: Mapping[str, Any], predictor: str, invocation: int) -> list[LMCall]:
        response = entry["response"]
        prompt_ids = _get(response, "prompt_token_ids")
        if prompt_ids is None:
            raise RuntimeError(
                f"vLLM returned no prompt_token_ids for {self.model}: the server must support return_token_ids"
            )
        calls = []
        for choice in _get(response, "choices", []) or []:
            completion_ids = list(_get(choice, "token_ids") or [])
            content = _get(_get(choice, "logprobs"), "content") or []
            logprobs = [float(_get(t, "logprob")) for t in content]
            if len(logprobs) != len(completion_ids):
                raise RuntimeError(
                    f"vLLM returned {len(completion_ids)} token ids but {len(logprobs)} logprobs for {self.model}"
                )
            message = _get(choice, "message")
            calls.append(
                LMCall(
                    predictor=predictor,
                    invocation=invocation,
                    model=str(_get(response, "model", self.adapter)),
                    messages=list(entry.get("messages") or []),
                    prompt_ids=list(prompt_ids),
                    completion_ids=completion_ids,
                    logprobs=logprobs,
                    finish_reason=str(_get(choice, "finish_reason", "")),
                    text=str(_get(message, "content", "") or ""),
                )
            )
        return calls


class ExternalLM(dspy.LM):
    """An OpenAI-compatible endpoint outside the policy (untrusted model, judge).

    DSPy retries transient errors with exponential backoff (``num_retries``);
    a call that still fails is noted on the running rollout's record (which then
    scores ``failure_score``) and re-raised.
    """

    def __init__(
        self,
        model: str,
        *,
        role: str,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        temperature: Optional[float] = None,
        max_tokens: Optional[int] = None,
        timeout: float = 60.0,
        num_retries: int = 3,
    ) -> None:
        options: dict[str, Any] = {"timeout": timeout}
        if base_url is not None:
            options["api_base"] = base_url
        if api_key is not None:
            options["api_key"] = api_key
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        super().__init__(
            model=f"openai/{model}",
            model_type="chat",
            temperature=temperature,
            cache=False,
            num_retries=num_retries,
            engine="litellm",
            **options,
        )
        self.role = role

    def _check_truncation(self, results: Any) -> None:
        """A truncated answer of an external model is its own business: log it quietly."""
        logger.debug("external LM response truncated", extra={"role": self.role, "model": self.model})

    def update_history(self, entry: dict[str, Any]) -> None:
        _keep_recent(self.history, entry)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        record = _RECORD.get()
        if record is not None and record.seed is not None and "seed" not in kwargs:
            # Seeded like the policy's calls, so a rollout batch (and an exact resume)
            # does not depend on the sampling of an endpoint that honours seeds.
            kwargs["seed"] = derive_seed(record.seed, "external", self.role, record.next_invocation(f"external:{self.role}"))
        try:
            return super().__call__(prompt, messages=messages, **kwargs)
        except Exception as exc:
            message = f"{self.role} ({self.model}): {type(exc).__name__}: {exc}"
            if record is not None:
                record.add_external_error(message)
            logger.warning("external LM call failed", extra={"role": self.role, "error": message[:500]})
            raise


def external_lm(
    endpoint: Optional[LMEndpoint],
    *,
    role: str,
    vllm: VLLMEndpoint,
    default_max_tokens: Optional[int] = None,
) -> ExternalLM:
    """The LM for an external role; ``None`` means the job's own base model via vLLM (with its key)."""
    if endpoint is None:
        return ExternalLM(
            vllm.served_model_name,
            role=role,
            base_url=vllm.base_url,
            api_key=vllm.api_key() or NO_KEY,
            max_tokens=default_max_tokens,
            timeout=vllm.request_timeout_seconds,
        )
    api_key: Optional[str] = None
    if endpoint.api_key_env is not None:
        api_key = os.environ.get(endpoint.api_key_env)
        if not api_key:
            raise RuntimeError(
                f"the {role} endpoint needs an API key in the environment variable "
                f"{endpoint.api_key_env}, which is unset"
            )
    elif endpoint.base_url is not None:
        api_key = NO_KEY  # a self-hosted OpenAI-compatible server without auth
    return ExternalLM(
        endpoint.model,
        role=role,
        base_url=endpoint.base_url,
        api_key=api_key,
        temperature=endpoint.temperature,
        max_tokens=endpoint.max_tokens,
        timeout=endpoint.timeout_seconds,
        num_retries=endpoint.max_retries,
    )
