"""Mutations of a GRPOJob (a GRPOInferencePool) generated from the CRD's own schema: every field, every way of
getting it wrong.

For each node of ``spec`` (and the job's ``metadata.name``) the generator finds a *carrier*: the
seed job with that field present and a value pydantic accepts, repaired by the fewest edits of
the objects around it when a cross-field rule (exactly one of, x needs y) would otherwise refuse
it. It then varies the field in the carrier: the wrong type, out of range (each bound and one
past it), empty, the longest value its bounds allow and one longer, other valid values of its
grammar, more items or keys than allowed, map keys a label could not carry, an unknown key. A new
field of the API is covered without editing this module; the pool of sample strings below is the
only thing a new string grammar may need.

Pure: no cluster here (tests/support/admission.py sends the mutations to an API server).
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

from grpo_operator.api import InvalidJob, parse_job
from grpo_operator.api.pool import KIND as POOL_KIND
from grpo_operator.api.pool import parse_pool
from support.jobdocs import load_example

# A list item (the first) and a map entry in a path; every other step is a property name.
ITEM = 0


@dataclass(frozen=True)
class Entry:
    """A map value in a path, under ``key`` (``None``: whichever key the carrier has or gets)."""

    key: Optional[str] = None


Step = Union[str, int, Entry]
Path = tuple[Step, ...]

# Strings tried wherever a string goes: as the carrier's value (the first that the schema and pydantic accept)
# and, when the field's grammar takes them, as further valid values. Chosen to meet the API's grammars (names,
# keys, URLs, import paths, quantities, a commit) and to probe what a child object could not carry (dots,
# slashes, upper case, a leading slash, spaces).
STRING_POOL = (
    "a",
    "a.b",
    "A_b",
    "/a/b",
    "a b",
    "1",
    "0",
    "1Gi",
    "a:b",
    "a/b",
    "https://example.com/a",
    "git@example.com:a/b.git",
    "0123456789abcdef0123456789abcdef01234567",
)
# Keys tried in maps: the carrier takes the first pydantic accepts; the others probe label-key grammar.
KEY_POOL = ("a", "cpu", "example.com/a", "A_b.c", "a/b/c", "-a", "a" * 64, "")
UNKNOWN_KEY = "unknownField"
WRONG_TYPES = {
    "string": 12345,
    "integer": "x",
    "number": "x",
    "boolean": "x",
    "object": "x",
    "array": "x",
}


@dataclass(frozen=True)
class Mutation:
    """One job document to send, and what it changed."""

    path: str  # where, as the API server writes paths: spec.code[0].git.url, spec.trainer.labels[a]
    kind: str  # what was done: wrong-type, below-minimum, longest, too-long, sample, unknown-key, ...
    doc: dict[str, Any]
    names: tuple[str, ...]  # a rejection must name one of these: the field's path, or its name in its parent's rule
    strict: bool = False  # sent with fieldValidation=Strict (unknown keys refused); else Ignore (pruned)

    @property
    def label(self) -> str:
        return f"{self.path} {self.kind}"


# --------------------------------------------------------------------------- the schema


def walk(schema: dict[str, Any], path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every node of a structural schema with its path (list items as ITEM, map values as Entry())."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], (*path, ITEM))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], (*path, Entry()))


def kind_of(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map"
    return str(schema.get("type", "any"))


def show(path: Path) -> str:
    out = ""
    for step in path:
        if isinstance(step, Entry):
            out += f"[{step.key}]"
        elif isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else step
    return out


def _fits(schema: dict[str, Any], value: str) -> bool:
    if "enum" in schema:
        return value in schema["enum"]
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        return False
    return "pattern" not in schema or re.search(schema["pattern"], value) is not None


def strings(schema: dict[str, Any]) -> list[str]:
    """The pool's strings this string schema takes (its enum's values for an enum)."""
    if "enum" in schema:
        return list(schema["enum"])
    return [s for s in STRING_POOL if _fits(schema, s)]


def longest(schema: dict[str, Any], start: str) -> Optional[str]:
    """A value of exactly maxLength that the schema takes, grown from ``start`` (None when none is found)."""
    n = schema.get("maxLength")
    if n is None or "enum" in schema:
        return None
    for fill in ("a", "1", "0"):
        for candidate in (start + fill * (n - len(start)), fill * n):
            if len(candidate) == n and _fits(schema, candidate):
                return candidate
    return None


def minimal(schema: dict[str, Any]) -> Any:
    """The smallest value the schema takes on its own: required properties only, the first fitting sample."""
    if "default" in schema:
        return copy.deepcopy(schema["default"])
    kind = kind_of(schema)
    if kind == "object":
        return {name: minimal(schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "map":
        return {}
    if kind == "array":
        return [minimal(schema["items"]) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        fitting = strings(schema)
        return fitting[0] if fitting else ""
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if kind == "number" and low is not None and high is not None:
            return (low + high) / 2
        value = 1 if low is None else low + 1 if schema.get("exclusiveMinimum") else low
        return value if high is None else min(value, high)
    if kind == "boolean":
        return False
    if kind == "int-or-string":
        return 1
    return {}


# --------------------------------------------------------------------------- carriers


def parse(doc: dict[str, Any]) -> Any:
    """pydantic's reading of the document, by its kind: a GRPOJob or a GRPOInferencePool (raises InvalidJob)."""
    return parse_pool(doc) if doc.get("kind") == POOL_KIND else parse_job(doc)


def valid(doc: dict[str, Any]) -> bool:
    """pydantic accepts the job (the pool): the layer every reader of a manifest goes through."""
    try:
        parse(doc)
    except InvalidJob:  # InvalidPool is one
        return False
    return True


def _child(schema: dict[str, Any], step: Step) -> dict[str, Any]:
    if isinstance(step, Entry):
        return schema["additionalProperties"]
    if isinstance(step, int):
        return schema["items"]
    return schema["properties"][step]


def _place(
    doc: dict[str, Any], root: dict[str, Any], path: Path, leaf: Any, key: Optional[str]
) -> tuple[dict[str, Any], Path]:
    """``doc`` with ``leaf`` at ``path``, containers created minimal on the way; a map entry under ``key``
    (None: the map's first key, else the pool's first). Returns the document and the concrete path."""
    doc = copy.deepcopy(doc)
    node: Any = doc
    schema = root
    concrete: list[Step] = []
    for i, step in enumerate(path):
        sub = _child(schema, step)
        slot: Any = step
        if isinstance(step, Entry):
            slot = key if key is not None else next(iter(node), KEY_POOL[0])
            step = Entry(slot)
        elif isinstance(step, int) and not node:
            node.append(minimal(sub))
        concrete.append(step)
        if i == len(path) - 1:
            node[slot] = copy.deepcopy(leaf)
        else:
            if isinstance(node, dict) and slot not in node:
                node[slot] = minimal(sub)
            node = node[slot]
        schema = sub
    return doc, tuple(concrete)


def _choices(schema: dict[str, Any]) -> list[Any]:
    """Values tried for a property added to repair a carrier: each of an enum's or a boolean's, else the minimal."""
    if "enum" in schema:
        return list(schema["enum"])
    if kind_of(schema) == "boolean":
        return [True, False]
    return [minimal(schema)]


def _edits(doc: dict[str, Any], root: dict[str, Any], path: Path) -> Iterator[dict[str, Any]]:
    """``doc`` with one or two properties of one object on ``path`` (the field itself included) removed or
    added, the deepest object first."""
    objects: list[tuple[Path, dict[str, Any], Optional[str]]] = []
    schema, prefix = root, ()
    for step in (*path, None):
        if kind_of(schema) == "object":
            objects.append((prefix, schema, step if isinstance(step, str) else None))
        if step is not None:
            schema, prefix = _child(schema, step), (*prefix, step)
    for prefix, schema, keep in reversed(objects):
        node = _get(doc, prefix)
        if not isinstance(node, dict):
            continue
        required = set(schema.get("required", []))
        props = [p for p in schema.get("properties", {}) if p != keep and p not in required]
        singles = [("drop", p, None) for p in props if p in node]
        singles += [("add", p, v) for p in props if p not in node for v in _choices(schema["properties"][p])]
        for combo in itertools.chain(((e,) for e in singles), itertools.combinations(singles, 2)):
            edited = copy.deepcopy(doc)
            target = _get(edited, prefix)
            for op, p, value in combo:
                if op == "drop":
                    target.pop(p, None)
                else:
                    target[p] = copy.deepcopy(value)
            yield edited


def _get(doc: Any, path: Path) -> Any:
    for step in path:
        if isinstance(step, Entry):
            doc = doc[step.key] if step.key is not None else next(iter(doc.values()))
        else:
            doc = doc[step]
    return doc


def carrier(seed: dict[str, Any], root: dict[str, Any], path: Path) -> tuple[dict[str, Any], Path, bool]:
    """The seed with a value at ``path`` that pydantic accepts: (document, concrete path, found).

    The field's own value comes first: the seed's when it has one, else the samples for its schema. When
    the job around it is then invalid (a rule tying it to a sibling), one or two properties of the objects
    on the path are dropped or added. ``found`` is False for a field nothing makes valid (a refused key):
    the document then holds the first sample, and every mutation of it must be refused.
    """
    schema = root
    for step in path:
        schema = _child(schema, step)
    try:
        current = [_get(seed, path)]
    except (KeyError, IndexError, StopIteration, TypeError):
        current = []
    candidates = current + (strings(schema) if kind_of(schema) == "string" else []) or [minimal(schema)]
    keys: list[Optional[str]] = [None, *KEY_POOL] if any(isinstance(s, Entry) for s in path) else [None]
    placed = [_place(seed, root, path, value, key) for key in keys for value in candidates]
    for doc, concrete in placed:
        if valid(doc):
            return doc, concrete, True
    for doc, concrete in placed[:1]:
        for edited in _edits(doc, root, concrete):
            if valid(edited):
                return edited, concrete, True
    return placed[0][0], placed[0][1], False


# --------------------------------------------------------------------------- mutations


def _names(path: Path) -> tuple[str, ...]:
    """What a rejection of a change at ``path`` must mention: the path up to its last property name, or
    that name itself (a rule of the parent object names its fields)."""
    cut = path
    while cut and not isinstance(cut[-1], str):
        cut = cut[:-1]
    return (show(cut), str(cut[-1])) if cut else ("",)


def _values(schema: dict[str, Any], current: Any) -> list[tuple[str, Any]]:
    """(kind, value) of every change of a node whose schema is ``schema`` and carrier value ``current``."""
    kind = kind_of(schema)
    out: list[tuple[str, Any]] = []
    if kind in WRONG_TYPES:
        out.append(("wrong-type", WRONG_TYPES[kind]))
    if kind == "string":
        out.append(("empty", ""))
        if "enum" in schema:
            out += [(f"enum {v}", v) for v in schema["enum"] if v != current]
            out.append(("not-in-enum", "not-an-option"))
        else:
            out += [(f"sample {v!r}", v) for v in strings(schema) if v != current]
            wrong = [s for s in STRING_POOL if not _fits(schema, s)]
            if "pattern" in schema and wrong:
                out.append((f"off-pattern {wrong[0]!r}", wrong[0]))
            top = longest(schema, current if isinstance(current, str) else "")
            if top is not None:
                out.append(("longest", top))
            if "maxLength" in schema:
                out.append(("too-long", (top or "a" * schema["maxLength"]) + "a"))
    elif kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.5
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            out += [("minimum", low), ("below-minimum", low - step)] if not schema.get("exclusiveMinimum") else [
                ("at-exclusive-minimum", low)
            ]
        else:
            out.append(("negative", -1))
        if high is not None:
            out += [("maximum", high), ("above-maximum", high + step)] if not schema.get("exclusiveMaximum") else [
                ("at-exclusive-maximum", high)
            ]
        else:
            out.append(("huge", 2**62 if kind == "integer" else 1e300))
    elif kind == "boolean":
        out += [("true", True), ("false", False)]
    elif kind == "int-or-string":
        out += [("wrong-type", [1]), ("zero", 0), ("negative", -1), ("negative-string", "-1"), ("empty", "")]
        out += [(f"sample {v!r}", v) for v in ("1Gi", "500m", "1e3", "1" * schema.get("maxLength", 64), "x")]
    elif kind == "array":
        item = current[0] if isinstance(current, list) and current else minimal(schema["items"])
        out.append(("empty", []))
        if "maxItems" in schema:
            out.append(("too-many-items", [copy.deepcopy(item) for _ in range(schema["maxItems"] + 1)]))
    elif kind == "map":
        value = next(iter(current.values())) if isinstance(current, dict) and current else minimal(
            schema["additionalProperties"]
        )
        out.append(("empty", {}))
        out += [(f"key {k!r}", {k: value}) for k in KEY_POOL]
        if "maxProperties" in schema:
            many = {f"k{i}": value for i in range(schema["maxProperties"] + 1)}
            out.append(("too-many-keys", many))
    elif kind == "object":
        out.append(("empty", {}))
    return out


def _set(doc: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parent = _get(doc, path[:-1])
    last = path[-1]
    parent[last.key if isinstance(last, Entry) else last] = value
    return doc


# metadata.name is not in the CRD's schema (the API server checks it as a name); the root rule bounds it.
NAME_VALUES = (
    ("longest", "a" * 63),
    ("too-long", "a" * 64),
    ("longest-object-name", "a" * 253),
    ("dots", "a.b"),
    ("digit-first", "1a"),
    ("upper-case", "Papillon"),
)


@dataclass(frozen=True)
class Generated:
    """The corpus: the mutations, and what became of each field's carrier."""

    mutations: list[Mutation]
    carried: list[str]  # fields a valid value was found for
    refused: list[str]  # fields no value makes valid (a refused key, a list that must stay empty)
    no_sample: list[str]  # string fields whose grammar no sample of STRING_POOL meets: add one


def seed_job() -> dict[str, Any]:
    """The seed of the corpus: the example job, plus the optional sections it leaves out whose objects need a
    sibling chosen among several (spec.export's destinations: exactly one of claim, hub, s3), so each of their
    fields is reached on a valid job."""
    seed = load_example()
    seed["spec"]["export"] = {"destinations": [{"claim": {"claimName": "models"}}]}
    return seed


def seed_pool() -> dict[str, Any]:
    """The seed of the pool's corpus: a pool of the example job's base model, its slots for two jobs."""
    return {
        "apiVersion": "grpo.dev/v1alpha1",
        "kind": POOL_KIND,
        "metadata": {"name": "shared"},
        "spec": {"model": copy.deepcopy(load_example()["spec"]["model"]), "maxLoras": 4, "maxCpuLoras": 8},
    }


def generate(seed: dict[str, Any], spec_schema: dict[str, Any]) -> Generated:
    """Every mutation of the seed for every node of ``spec_schema``, and the metadata.name cases."""
    root = {"type": "object", "properties": {"spec": spec_schema}}
    out = Generated([], [], [], [])
    for path, schema in walk(spec_schema, ("spec",)):
        doc, concrete, found = carrier(seed, root, path)
        where = show(concrete)
        names = _names(concrete)
        current = _get(doc, concrete)
        if found:
            out.carried.append(where)
            out.mutations.append(Mutation(where, "valid", doc, names))
        elif kind_of(schema) == "string" and not strings(schema):
            out.no_sample.append(where)
        else:
            out.refused.append(where)
        for kind, value in _values(schema, current):
            out.mutations.append(Mutation(where, kind, _set(doc, concrete, value), names))
        if kind_of(schema) == "object" and isinstance(current, dict):
            unknown = _set(doc, concrete, {**current, UNKNOWN_KEY: 1})
            out.mutations.append(Mutation(where, "unknown-key", unknown, names))
            out.mutations.append(Mutation(where, "unknown-key", unknown, names, strict=True))
    for kind, name in NAME_VALUES:
        doc = copy.deepcopy(seed)
        doc["metadata"]["name"] = name
        out.mutations.append(Mutation("metadata.name", kind, doc, ("metadata.name",)))
    return out
