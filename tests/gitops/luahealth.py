"""Evaluate docs/argocd-health.lua as Argo CD does, with gopher-lua (Argo CD's Lua VM).

The evaluator is tests/gitops/luaeval (Go), built on first use into the GRPO cache
dir keyed by its sources (``build.sh``). Used by tests/gitops (statuses from the
operator's decision functions) and tests/cluster/test_chart_install.py (statuses
of live jobs).
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HEALTH_LUA = ROOT / "docs" / "argocd-health.lua"
BUILD = HERE / "luaeval" / "build.sh"


@dataclass(frozen=True)
class Health:
    """What Argo CD would show for one object (``error``: the script failed)."""

    status: str = ""
    message: str = ""
    error: str = ""


@functools.cache
def luaeval_binary() -> Path:
    """The built evaluator; builds it (seconds, gopher-lua from the Go module proxy) when missing."""
    proc = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"building luaeval failed ({BUILD}):\n{proc.stderr.strip()[-3000:]}")
    return Path(lines[-1])


def evaluate(objects: Sequence[Mapping[str, Any]], script: Path = HEALTH_LUA, open_libs: bool = False) -> list[Health]:
    """Run the health script on each object (one process for all of them)."""
    args = [str(luaeval_binary()), *(["-open-libs"] if open_libs else []), str(script)]
    proc = subprocess.run(
        args, input=json.dumps(list(objects)), capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"luaeval exited {proc.returncode}: {proc.stderr.strip()}")
    return [Health(**r) for r in json.loads(proc.stdout)]


def grpojob(status: Mapping[str, Any] | None, generation: int = 1, name: str = "papillon") -> dict[str, Any]:
    """A GRPOJob object around a status document (what Argo CD passes as ``obj``)."""
    doc: dict[str, Any] = {
        "apiVersion": "grpo.dev/v1alpha1",
        "kind": "GRPOJob",
        "metadata": {"name": name, "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        doc["status"] = dict(status)
    return doc
