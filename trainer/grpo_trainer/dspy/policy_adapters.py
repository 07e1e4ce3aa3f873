"""The policy's DSPy adapters (``grpo.adapter``): chat, json or xml, the prompt sampled is the prompt trained on.

Each is DSPy's own adapter (ChatAdapter, JSONAdapter, XMLAdapter) with two changes,
for calls of the policy only:

* no second try in another format. ChatAdapter and XMLAdapter retry a parse failure
  through JSONAdapter, and JSONAdapter asks the endpoint for a JSON response format on
  its own: either would sample something other than what the prompt the trainer
  records asked for. A parse failure marks the rollout's calls ``parse_failed`` (the
  rollout scores format_failure_score) and re-raises;
* with ``constrain_format``, vLLM's structured outputs hold the output to the adapter's
  format, for models that cannot produce it yet: a regex of the field markers (chat), of
  the tags (xml) or of the JSON object (json; a JSON schema when a field's type is a list
  or an object, which a regex cannot spell). Each field's content is bounded so a
  constrained completion always fits ``max_tokens`` (the schema's whitespace is the
  server's to bound: vLLM's structured_outputs_config.disable_any_whitespace). The sampled tokens are the
  model's own, but vLLM applies the grammar mask before computing logprobs: tokens the
  grammar forces carry sampler logprobs near 0, content tokens their raw values.

Other LMs (judge, untrusted model, a predictor's own LM) get DSPy's default
ChatAdapter, fallback included. Whatever the format, the trainer takes the prompt and
completion token ids from vLLM's reply (grpo_trainer.dspy.lms.PolicyLM), never from
re-formatting or re-tokenising.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import dspy
import pydantic
from dspy.adapters.chat_adapter import ChatAdapter
from dspy.adapters.json_adapter import JSONAdapter
from dspy.adapters.xml_adapter import XMLAdapter
from dspy.utils.exceptions import AdapterParseError

from grpo_trainer.contract.hparams import AdapterFormat
from grpo_trainer.dspy.lms import PolicyLM, current_record

# Field content without a bound on max_tokens: long enough for a real answer.
DEFAULT_FIELD_CHARS = 400
_FIELD_CONTENT = {
    bool: "(True|False)",
    int: "-?[0-9]{1,9}",
    float: "-?[0-9]{1,9}(\\.[0-9]{1,6})?",
}
_COMPLETED = "[[ ## completed ## ]]"
_JSON_CONTENT = {  # JSON's own spelling: no leading zeros, lower-case booleans
    bool: "(true|false)",
    int: "-?(0|[1-9][0-9]{0,8})",
    float: "-?(0|[1-9][0-9]{0,8})(\\.[0-9]{1,6})?",
}
_JSON_BOUND = 999_999_999  # numbers as long as the regexes' (9 digits)


def _header(name: str) -> str:
    return f"[[ ## {name} ## ]]\n"


def _literal(text: str) -> str:
    """Regex for literal scaffolding text, in the small regex dialect grammar engines share."""
    return text.replace("[", "\\[").replace("]", "\\]").replace("\n", "\\n")


def field_chars_for(signature: type[dspy.Signature], max_tokens: Optional[int], scaffold: int) -> int:
    """Content bound per field so a constrained completion (``scaffold`` characters of markers) fits ``max_tokens``.

    Counts one token per character, the worst case: under a grammar a model may
    spell even the markers one character at a time (a random one does).
    """
    if max_tokens is None:
        return DEFAULT_FIELD_CHARS
    fields = signature.output_fields
    budget = (max_tokens - scaffold - 1) // max(1, len(fields))  # - 1: EOS
    if budget < 1:
        raise ValueError(
            f"max_tokens={max_tokens} cannot hold the output format of {list(fields)} "
            f"(~{scaffold} tokens of markers); raise max_completion_length"
        )
    return min(DEFAULT_FIELD_CHARS, budget)


def format_regex(signature: type[dspy.Signature], max_field_chars: int = DEFAULT_FIELD_CHARS) -> str:
    """A regex of ChatAdapter's output format for ``signature``'s output fields.

    Field content excludes ``[`` so it can never contain a field header; the
    bound keeps a model that never emits a newline from running to the token limit.
    """
    generic = f"[^\\[]{{1,{max_field_chars}}}"
    parts = []
    for name, info in signature.output_fields.items():
        content = _FIELD_CONTENT.get(info.annotation, generic)
        parts.append(_literal(_header(name)) + content + "\\n\\n")
    return "".join(parts) + _literal(_COMPLETED)


def xml_regex(signature: type[dspy.Signature], max_field_chars: int = DEFAULT_FIELD_CHARS) -> str:
    """A regex of XMLAdapter's output format: ``<field>`` content ``</field>`` per output field.

    Content excludes ``<`` and ``&``, which would open a tag or an entity, so the
    whole completion is always well-formed XML.
    """
    generic = f"[^<&]{{1,{max_field_chars}}}"
    parts = [
        f"<{name}>\\n{_FIELD_CONTENT.get(info.annotation, generic)}\\n</{name}>"
        for name, info in signature.output_fields.items()
    ]
    return "\\n\\n".join(parts)


def json_regex(signature: type[dspy.Signature], max_field_chars: int = DEFAULT_FIELD_CHARS) -> Optional[str]:
    """A regex of JSONAdapter's output, ``{"field": value, ...}`` spaced as json.dumps does; None when a field's
    type is a list or an object (see :func:`json_schema`).

    A string's content excludes ``"``, ``\\`` and control characters: it needs no escape,
    so ``max_field_chars`` bounds its tokens.
    """
    text = f'"[^"\\\\\\x00-\\x1f]{{1,{max_field_chars}}}"'
    parts = []
    for name, info in signature.output_fields.items():
        content = text if info.annotation is str else _JSON_CONTENT.get(info.annotation)
        if content is None:
            return None
        parts.append(f'"{name}": {content}')
    return "\\{" + ", ".join(parts) + "\\}"


def json_schema(signature: type[dspy.Signature], max_field_chars: int = DEFAULT_FIELD_CHARS) -> dict[str, Any]:
    """A JSON schema of JSONAdapter's output: one object, every output field required, nothing else.

    A string field's content excludes ``"``, ``\\`` and control characters (no escapes),
    so ``max_field_chars`` bounds its tokens as the regex formats do; numbers are bounded
    as theirs.
    """
    model = pydantic.create_model(  # type: ignore[call-overload]
        "PolicyOutputs",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **{name: (info.annotation, ...) for name, info in signature.output_fields.items()},
    )
    schema = model.model_json_schema()
    schema.pop("title", None)
    for name, info in signature.output_fields.items():
        prop = schema["properties"][name]
        prop.pop("title", None)
        if info.annotation is str:
            prop.update(pattern=f'^[^"\\\\\\x00-\\x1f]{{1,{max_field_chars}}}$')
        elif info.annotation in (int, float):
            prop.update(minimum=-_JSON_BOUND, maximum=_JSON_BOUND)
    schema["required"] = list(signature.output_fields)
    schema["additionalProperties"] = False
    return schema


class _PolicyFormat:
    """What the three policy adapters share; mixed in before the DSPy adapter it changes."""

    name: ClassVar[AdapterFormat]
    dspy_options: ClassVar[dict[str, Any]]  # for the DSPy adapter's own __init__

    def __init__(
        self,
        *,
        constrain_format: bool = False,
        max_field_chars: Optional[int] = None,
        drives: tuple[type, ...] = (PolicyLM,),
    ) -> None:
        super().__init__(**self.dspy_options)  # type: ignore[call-arg]
        self.constrain_format = constrain_format
        self.max_field_chars = max_field_chars
        self.drives = drives  # the LMs formatted this way (the policy; the served result, as it was trained)
        self._default = ChatAdapter()

    def scaffold_chars(self, signature: type[dspy.Signature]) -> int:
        """Characters of the format's markers around the fields' content."""
        raise NotImplementedError

    def output_constraint(self, signature: type[dspy.Signature], max_field_chars: int) -> dict[str, Any]:
        """vLLM's ``structured_outputs`` request that holds an output to this format."""
        raise NotImplementedError

    def __call__(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        if not isinstance(lm, self.drives):
            return self._default(lm, lm_kwargs, signature, demos, inputs)
        if self.constrain_format:
            extra_body = {**lm.kwargs.get("extra_body", {}), **lm_kwargs.get("extra_body", {})}
            chars = self.max_field_chars or field_chars_for(
                signature, lm_kwargs.get("max_tokens", lm.kwargs.get("max_tokens")), self.scaffold_chars(signature)
            )
            extra_body["structured_outputs"] = self.output_constraint(signature, chars)
            lm_kwargs = {**lm_kwargs, "extra_body": extra_body}
        record = current_record()
        seen = len(record.calls) if record is not None else 0
        try:
            return super().__call__(lm, lm_kwargs, signature, demos, inputs)  # type: ignore[misc]
        except AdapterParseError:
            if record is not None:
                for call in record.calls[seen:]:
                    call.parse_failed = True
            raise


class PolicyChatAdapter(_PolicyFormat, ChatAdapter):
    """ChatAdapter (``[[ ## field ## ]]`` markers) for the policy: no JSONAdapter retry."""

    name = "chat"
    dspy_options = {"use_json_adapter_fallback": False}

    def scaffold_chars(self, signature: type[dspy.Signature]) -> int:
        return sum(len(_header(n)) + 2 for n in signature.output_fields) + len(_COMPLETED)

    def output_constraint(self, signature: type[dspy.Signature], max_field_chars: int) -> dict[str, Any]:
        return {"regex": format_regex(signature, max_field_chars)}


class PolicyJSONAdapter(_PolicyFormat, JSONAdapter):
    """JSONAdapter for the policy: no response format of its own asking (the constraint is ours to set)."""

    name = "json"
    dspy_options = {"use_native_function_calling": False}  # the output is the completion's text, nothing else

    def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any) -> None:
        """JSONAdapter would ask for json_object mode wherever litellm lists response_format: a silent constraint."""

    def scaffold_chars(self, signature: type[dspy.Signature]) -> int:
        return 2 + sum(len(n) + 8 for n in signature.output_fields)  # {} and "name": "", (as vLLM spaces it)

    def output_constraint(self, signature: type[dspy.Signature], max_field_chars: int) -> dict[str, Any]:
        regex = json_regex(signature, max_field_chars)  # exact spacing: an untrained model pads free whitespace
        return {"regex": regex} if regex is not None else {"json": json_schema(signature, max_field_chars)}


class PolicyXMLAdapter(_PolicyFormat, XMLAdapter):
    """XMLAdapter (``<field>`` tags) for the policy: no JSONAdapter retry."""

    name = "xml"
    dspy_options = {"use_json_adapter_fallback": False}

    def scaffold_chars(self, signature: type[dspy.Signature]) -> int:
        return sum(2 * len(n) + 9 for n in signature.output_fields)  # <n>\n ... \n</n>\n\n

    def output_constraint(self, signature: type[dspy.Signature], max_field_chars: int) -> dict[str, Any]:
        return {"regex": xml_regex(signature, max_field_chars)}


PolicyAdapter = PolicyChatAdapter | PolicyJSONAdapter | PolicyXMLAdapter
_ADAPTERS: dict[str, type[PolicyChatAdapter] | type[PolicyJSONAdapter] | type[PolicyXMLAdapter]] = {
    cls.name: cls for cls in (PolicyChatAdapter, PolicyJSONAdapter, PolicyXMLAdapter)
}


def policy_adapter(
    name: AdapterFormat, *, constrain_format: bool = False, drives: tuple[type, ...] = (PolicyLM,)
) -> PolicyAdapter:
    """The policy's adapter named by ``grpo.adapter`` (``drives``: the LM classes it formats; others get DSPy's
    default ChatAdapter)."""
    return _ADAPTERS[name](constrain_format=constrain_format, drives=drives)
