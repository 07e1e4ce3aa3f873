"""The tutorial's configuration cell (the seed), read from its verbatim copy in tests/data.

One reader for every place that needs the seed's numbers (the API tests, the GPU check),
so none of them keeps a second copy that could drift from the tutorial.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

SEED_SNIPPET = Path(__file__).resolve().parents[1] / "data" / "rl_papillon_seed.py"


def seed_call(path: Path = SEED_SNIPPET) -> tuple[dict[str, Any], dict[str, ast.expr]]:
    """``train_kwargs`` (evaluated) and the ``ArborGRPO(...)`` keyword arguments (as expressions)."""
    tree = ast.parse(path.read_text())
    train_kwargs: dict[str, Any] = {}
    arbor: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "train_kwargs":
            train_kwargs = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ArborGRPO":
            arbor = {kw.arg: kw.value for kw in node.keywords if kw.arg is not None}
    if not (train_kwargs and arbor):
        raise ValueError(f"{path}: the seed snippet was not understood (no train_kwargs or ArborGRPO call)")
    return train_kwargs, arbor
