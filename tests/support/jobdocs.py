"""Example manifests and the table of invalid ones, shared by unit and cluster tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
INVALID_CASES = yaml.safe_load((ROOT / "tests" / "data" / "invalid_jobs.yaml").read_text())


def load_example(name: str = "papillon.yaml") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _walk(doc: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    # keys may themselves contain dots (nvidia.com/gpu): only the known path
    # segments are split; a segment absent from the document starts a new map.
    parts = dotted.split(".")
    node = doc
    i = 0
    while i < len(parts) - 1:
        key = parts[i]
        if key not in node:
            node[key] = {}
        node = node[key]
        i += 1
    return node, parts[-1]


def mutated(case: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example document with one invalid case's changes applied."""
    doc = copy.deepcopy(base if base is not None else load_example())
    for path, value in (case.get("set") or {}).items():
        parent, key = _walk(doc, path)
        parent[key] = value
    for path in case.get("unset") or []:
        parent, key = _walk(doc, path)
        parent.pop(key, None)
    return doc
