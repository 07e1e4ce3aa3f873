"""Declarative cross-field rules, checked by pydantic and emitted as CEL.

Every cross-field rule is declared once as a :class:`Rule`: the pydantic layer
evaluates its Python predicate, and the CRD generator emits its CEL expression
into ``x-kubernetes-validations``. The two cannot drift because they live side by
side, and the tests feed the same invalid documents to both layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Rule:
    """A cross-field invariant of one object of the API.

    ``cel`` runs in the API server with ``self`` bound to the object;
    ``check`` runs in pydantic on the model instance and returns True when the
    object is valid. ``field`` is the offending field's path relative to the
    object (used for ``fieldPath`` in the CRD and for the pydantic message).
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str = ""
    # Optional: a CEL expression (API server) and a Python function (pydantic) that say
    # *which* value broke the rule, e.g. the offending name; ``message`` stays the fallback.
    message_expression: str = ""
    describe: Callable[[Any], str] | None = None
    # Transition rules (those that reference oldSelf) are enforced only by the
    # API server; pydantic has no previous object to compare against.
    transition: bool = False

    def to_cel(self) -> dict[str, str]:
        """The rule as an entry of x-kubernetes-validations."""
        entry = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            entry["messageExpression"] = self.message_expression
        if self.field:
            entry["fieldPath"] = "." + self.field
        return entry


@dataclass(frozen=True)
class FieldAlias:
    """A second name of a field (the library renamed the argument): either name is accepted, never both.

    Pydantic validates the alias's value under its own name (an error names the field as
    written) and then moves it to ``canonical``, so everything past the API sees one name; the CRD keeps both (``kubectl explain`` describes the
    alias), and its CEL rule refuses a document that sets both. Neither field may have a
    schema default: the API server would fill one in beside the other.
    """

    name: str
    canonical: str

    @property
    def message(self) -> str:
        return f"set {self.name} or {self.canonical} (two names of one argument), not both"

    def to_cel(self) -> dict[str, str]:
        return {
            "rule": f"!(has(self.{self.name}) && has(self.{self.canonical}))",
            "message": self.message,
            "fieldPath": "." + self.name,
        }


def without_schema_default(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a field with an alias: no default in the CRD (see FieldAlias); pydantic has one."""
    schema.pop("default", None)


class RuleViolation(ValueError):
    """Raised inside validators so pydantic reports the field and the fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class RuledModel(BaseModel):
    """A pydantic model whose ``rules`` are checked on validation and emitted as CEL."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_default=True)

    rules: ClassVar[tuple[Rule, ...]] = ()
    aliases: ClassVar[tuple[FieldAlias, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        if cls.rules or cls.aliases:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [a.to_cel() for a in cls.aliases] + [r.to_cel() for r in cls.rules]
        return schema

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for alias in cls.aliases:
                # null, as a notebook may write it, is unset (the API server prunes it too)
                if data.get(alias.name) is not None and data.get(alias.canonical) is not None:
                    raise RuleViolation(alias.name, alias.message)
        return data

    @model_validator(mode="after")
    def _check_rules(self) -> "RuledModel":
        for alias in type(self).aliases:  # validated under the name it was given, kept under the canonical one
            value = getattr(self, alias.name)
            if value is not None:
                setattr(self, alias.canonical, value)
                setattr(self, alias.name, None)
        for rule in type(self).rules:
            if rule.transition:
                continue
            if not rule.check(self):
                raise RuleViolation(rule.field, rule.describe(self) if rule.describe else rule.message)
        return self


def nested(model: type[BaseModel], description: str, **kwargs: Any) -> Any:
    """A sub-object that is always present, filled with its own defaults.

    The CRD's ``default`` is the fully defaulted object (not ``{}``): the API server
    checks a default against the object's CEL rules as written, and readers of the
    stored object then see every defaulted field.
    """
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["default"] = model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return Field(default_factory=model, description=description, json_schema_extra=extra, **kwargs)
