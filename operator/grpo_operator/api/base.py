"""Base of the GRPOJob API's own objects (camelCase on the wire)."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from grpo_trainer.contract.rules import Rule, RuledModel, nested

__all__ = ["ApiModel", "Rule", "exactly_one_of", "nested"]


class ApiModel(RuledModel):
    """An object of the GRPOJob spec or status.

    camelCase on the wire (Kubernetes convention), snake_case in Python, unknown
    fields rejected so a typo never silently becomes a default.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


def exactly_one_of(*fields: str) -> Rule:
    """Rule for objects that describe one thing in alternative ways."""
    wire = [to_camel(f) for f in fields]
    cel = " + ".join(f"(has(self.{w}) ? 1 : 0)" for w in wire) + " == 1"
    listed = ", ".join(wire)
    return Rule(
        cel=cel,
        message=f"set exactly one of {listed}",
        check=lambda obj: sum(getattr(obj, f) is not None for f in fields) == 1,
    )


def not_both(first: str, second: str) -> Rule:
    """Rule for two optional fields that exclude each other (the second one is named as the field to drop)."""
    a, b = to_camel(first), to_camel(second)
    return Rule(
        cel=f"!(has(self.{a}) && has(self.{b}))",
        message=f"set {a} or {b}, not both",
        check=lambda obj: getattr(obj, first) is None or getattr(obj, second) is None,
        field=b,
    )
