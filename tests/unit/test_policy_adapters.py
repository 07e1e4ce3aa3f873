"""The policy's output formats (grpo.adapter) and their constraints, in xgrammar, the grammar engine vLLM runs
them with: what the constraint lets through parses with the DSPy adapter, and always fits max_tokens."""

from __future__ import annotations

import json

import dspy
import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string as accepts

from grpo_trainer.dspy.policy_adapters import (
    PolicyAdapter,
    PolicyChatAdapter,
    PolicyJSONAdapter,
    PolicyXMLAdapter,
    field_chars_for,
    policy_adapter,
)

SIGNATURE = dspy.Signature("question -> answer, count: int, sure: bool")
# A well-formed output of each format, as the DSPy adapter writes it.
WELL_FORMED = {
    "chat": "[[ ## answer ## ]]\nParis\n\n[[ ## count ## ]]\n-3\n\n[[ ## sure ## ]]\nTrue\n\n[[ ## completed ## ]]",
    "json": '{"answer": "Paris", "count": -3, "sure": true}',
    "xml": "<answer>\nParis\n</answer>\n\n<count>\n-3\n</count>\n\n<sure>\nTrue\n</sure>",
}
# Field content that would break the format: a marker, a tag, an unescaped quote.
BREAKING = {"chat": "[[ ## sure ## ]]", "json": 'say "hi"', "xml": "a <b> c"}


def grammar(constraint: dict) -> xgrammar.Grammar:
    """What vLLM compiles a request's structured_outputs into (regex, or a JSON schema)."""
    if "regex" in constraint:
        return xgrammar.Grammar.from_regex(constraint["regex"])
    return xgrammar.Grammar.from_json_schema(json.dumps(constraint["json"]))


@pytest.mark.parametrize("name", ["chat", "json", "xml"])
def test_what_the_constraint_lets_through_the_adapter_parses(name: str) -> None:
    adapter = policy_adapter(name, constrain_format=True)  # type: ignore[arg-type]
    assert adapter.name == name
    g = grammar(adapter.output_constraint(SIGNATURE, 12))
    assert accepts(g, WELL_FORMED[name])
    assert adapter.parse(SIGNATURE, WELL_FORMED[name]) == {"answer": "Paris", "count": -3, "sure": True}
    assert not accepts(g, WELL_FORMED[name].replace("Paris", "P" * 13))  # the content bound holds
    assert not accepts(g, WELL_FORMED[name].replace("Paris", BREAKING[name]))


@pytest.mark.parametrize("name", ["chat", "json", "xml"])
def test_the_longest_constrained_output_fits_max_tokens(name: str) -> None:
    """One token per character is the worst case (an untrained model under a grammar may spell it so)."""
    signature = dspy.Signature("question -> llm_request, response")
    adapter = policy_adapter(name, constrain_format=True)  # type: ignore[arg-type]
    for max_tokens in (128, 256, 384):  # 128: the least the API lets constrain_output_format run with
        chars = field_chars_for(signature, max_tokens, adapter.scaffold_chars(signature))
        longest = {
            "chat": "[[ ## llm_request ## ]]\n{x}\n\n[[ ## response ## ]]\n{x}\n\n[[ ## completed ## ]]",
            "json": '{{"llm_request": "{x}", "response": "{x}"}}',
            "xml": "<llm_request>\n{x}\n</llm_request>\n\n<response>\n{x}\n</response>",
        }[name].format(x="x" * chars)
        assert accepts(grammar(adapter.output_constraint(signature, chars)), longest)
        assert len(longest) + 1 <= max_tokens  # + EOS


def test_json_fields_a_regex_cannot_spell_get_a_schema() -> None:
    signature = dspy.Signature("question -> topics: list[str], answer")
    constraint = PolicyJSONAdapter(constrain_format=True).output_constraint(signature, 20)
    assert set(constraint) == {"json"}
    g = grammar(constraint)
    assert accepts(g, '{"topics": ["a", "b"], "answer": "Paris"}')
    assert not accepts(g, '{"topics": ["a"], "answer": "Paris", "extra": 1}')


def test_no_adapter_retries_in_another_format() -> None:
    """DSPy's ChatAdapter and XMLAdapter retry a parse failure through JSONAdapter by default."""
    adapters: list[PolicyAdapter] = [PolicyChatAdapter(), PolicyXMLAdapter(), PolicyJSONAdapter()]
    assert [a.use_json_adapter_fallback for a in adapters[:2]] == [False, False]
    assert not adapters[2].use_native_function_calling  # the output is the completion text, nothing else
