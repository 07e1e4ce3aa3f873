"""Kubernetes names, keys and values as the API server checks them in the objects a job becomes,
and the label and annotation keys of the job's pods that are not the user's to set.

A string the job passes into a child object (a claim, a Secret key, a pod label) is held to
the child's own grammar here, at admission: the API server would otherwise accept the job and
refuse its pod later, where only the operator's condition says why.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field
from pydantic.alias_generators import to_snake

from grpo_trainer.contract.rules import Rule

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # RFC 1123 label: a claim's volume, a queue
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # Secrets, ConfigMaps, claims, classes
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"  # what the API server accepts as an env var name
CONFIG_KEY_NAME = r"^[-._a-zA-Z0-9]+$"  # a key of a Secret or ConfigMap
# A label or annotation key: [DNS subdomain prefix/]name, the name at most 63 characters.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
QUALIFIED_NAME_PREFIX_MAX = 253
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"  # at most 63 characters, may be empty

DNS_LABEL_MAX = 63
# metadata.name of a job: a label value of every child (grpo.dev/job, app.kubernetes.io/instance, Kueue's
# pod group) and the stem of their names, the Service's an RFC 1035 label (children.meta.dns_label).
JOB_NAME_MAX = DNS_LABEL_MAX

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
ConfigKey = Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY_NAME)]
LabelValue = Annotated[str, Field(max_length=DNS_LABEL_MAX, pattern=LABEL_VALUE)]

# What the operator puts on a job's pods, and whose meaning it decides: its own keys (the job, the
# attempt, the spec hash), the app.kubernetes.io labels it sets, and Kueue's (admission is spec.queueName).
OPERATOR_PREFIX = "grpo.dev/"
KUEUE_PREFIX = "kueue.x-k8s.io/"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
RESERVED_LABELS = (NAME_LABEL, INSTANCE_LABEL, COMPONENT_LABEL, MANAGED_BY_LABEL)
RESERVED_PREFIXES = (OPERATOR_PREFIX, KUEUE_PREFIX)
# Annotations that would change a pod's security profile: the legacy AppArmor and seccomp keys (the pods
# run RuntimeDefault, set in their securityContext).
SECURITY_ANNOTATION_PREFIXES = (
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)


def valid_key(key: str) -> bool:
    """A label or annotation key the API server accepts."""
    prefix, _, _ = key.rpartition("/")
    return re.match(QUALIFIED_NAME, key) is not None and len(prefix) <= QUALIFIED_NAME_PREFIX_MAX


def reserved_key(key: str, prefixes: tuple[str, ...], exact: tuple[str, ...] = ()) -> bool:
    return key in exact or key.startswith(prefixes)


def cel_list(items: tuple[str, ...]) -> str:
    """A CEL list literal of strings."""
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _cel_valid_key(var: str) -> str:
    return (
        f"{var}.matches('{QUALIFIED_NAME}') && "
        f"(!{var}.contains('/') || size({var}.split('/')[0]) <= {QUALIFIED_NAME_PREFIX_MAX})"
    )


def _cel_reserved(var: str, prefixes: tuple[str, ...], exact: tuple[str, ...]) -> str:
    starts = " || ".join(f"{var}.startsWith('{p}')" for p in prefixes)
    return f"({var} in {cel_list(exact)} || {starts})" if exact else f"({starts})"


def valid_keys(field: str, what: str, *, single: bool = False) -> Rule:
    """Every key of the map ``field`` (with ``single``: the string ``field``) is a label/annotation key."""
    test = _cel_valid_key(f"self.{field}") if single else f"self.{field}.all(k, {_cel_valid_key('k')})"

    def check(obj: object) -> bool:
        value = getattr(obj, to_snake(field))
        keys = [] if value is None else [value] if single else list(value)
        return all(valid_key(k) for k in keys)

    return Rule(
        cel=f"!has(self.{field}) || {test}",
        message=(
            f"{what} must be [prefix/]name: the name at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit; the prefix a lowercase DNS subdomain"
        ),
        check=check,
        field=field,
    )


def no_reserved_keys(field: str, prefixes: tuple[str, ...], exact: tuple[str, ...], why: str) -> Rule:
    """No key of the map ``field`` starts with one of ``prefixes`` or is one of ``exact``."""
    assert "'" not in why, "why is quoted in a CEL string"
    bad = _cel_reserved("k", prefixes, exact)
    listed = ", ".join([*(f"{p}*" for p in prefixes), *exact])
    fix = f"{why}; remove it"
    return Rule(
        cel=f"!has(self.{field}) || self.{field}.all(k, !{bad})",
        message=f"keys {listed} are refused: {fix}",
        message_expression=f"self.{field}.filter(k, {bad})[0] + ' is refused: {fix}'",
        check=lambda obj: not any(reserved_key(k, prefixes, exact) for k in getattr(obj, to_snake(field))),
        describe=lambda obj: next(
            f"{k} is refused: {fix}" for k in getattr(obj, to_snake(field)) if reserved_key(k, prefixes, exact)
        ),
        field=field,
    )
