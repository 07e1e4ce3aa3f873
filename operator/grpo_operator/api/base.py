"""Base of the GRPOJob API's own objects (camelCase on the wire)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from pydantic import ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from grpo_trainer.contract.rules import Rule, RuledModel, RuleViolation, nested

__all__ = ["ApiModel", "InlineSecrets", "Rule", "exactly_one_of", "nested"]


@dataclass(frozen=True)
class InlineSecrets:
    """Keys under which a secret might be pasted into an object, refused by the API server itself.

    An undeclared field is refused or silently pruned depending on the client's field
    validation, and a client-side ``kubectl apply`` keeps the whole manifest, the key with
    it, in the stored object's last-applied-configuration annotation. Declared, with a rule
    that fails whenever they are present, they make the API server refuse the job in every
    mode, so nothing of it is stored.
    """

    keys: tuple[str, ...]
    ref: str  # the Secret reference to use instead, e.g. apiKeySecretRef

    @property
    def message(self) -> str:
        return (
            "secrets are never accepted inline (the job, and the last-applied-configuration annotation of a "
            f"client-side kubectl apply, would keep them); put it in a Secret and set {self.ref}: "
            "{name: <secret>, key: <key>}"
        )

    def schema(self) -> dict[str, dict[str, str]]:
        refused = {"type": "string", "description": f"Refused: a secret goes in a Secret ({self.ref})."}
        return {key: dict(refused) for key in self.keys}

    def rule(self) -> dict[str, str]:
        """One rule for all the keys; its message names the one present."""
        present = " || ".join(f"has(self.{key})" for key in self.keys)
        which = "".join(f"has(self.{key}) ? '{key}' : " for key in self.keys[:-1]) + f"'{self.keys[-1]}'"
        assert "'" not in self.message  # quoted in CEL
        expression = f"({which}) + ': {self.message}'"
        return {"rule": f"!({present})", "message": self.message, "messageExpression": expression}


class ApiModel(RuledModel):
    """An object of the GRPOJob spec or status.

    camelCase on the wire (Kubernetes convention), snake_case in Python, unknown
    fields rejected so a typo never silently becomes a default; ``inline_secrets``
    names the keys refused with the fix (a Secret reference).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    inline_secrets: ClassVar[Optional[InlineSecrets]] = None

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        if cls.inline_secrets is not None:
            target = handler.resolve_ref_schema(schema)
            target["properties"].update(cls.inline_secrets.schema())
            rules = target.get("x-kubernetes-validations", [])
            target["x-kubernetes-validations"] = [*rules, cls.inline_secrets.rule()]
        return schema

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: object) -> object:
        refused = cls.inline_secrets
        if refused is not None and isinstance(data, dict):
            for key in refused.keys:
                if key in data:
                    raise RuleViolation(key, refused.message)
        return data


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
