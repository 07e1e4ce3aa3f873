"""Documents of a local pool run (``grpo-local --pool``): a GRPOInferencePool of the embedded default's model and
jobs of the default that name it. Used by tests/local/test_pool.py and bench/pool.py."""

from __future__ import annotations

import copy
from typing import Any

from grpo_operator.api import API_VERSION
from grpo_operator.api.pool import KIND, SLOTS_PER_JOB


def pool_manifest(name: str, job: dict[str, Any], jobs: int, *, max_loras: int = SLOTS_PER_JOB) -> dict[str, Any]:
    """A CPU pool serving ``job``'s base model at its LoRA rank, with the slots of ``jobs`` such jobs."""
    spec = job["spec"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "model": copy.deepcopy(spec["model"]),
            "gpusPerReplica": 0,
            "maxLoras": max_loras,
            "maxCpuLoras": max(max_loras, SLOTS_PER_JOB * jobs),
            "maxLoraRank": spec["trainKwargs"]["lora_config"]["r"],
        },
    }


def on_pool(job: dict[str, Any], name: str, pool: str) -> dict[str, Any]:
    """``job`` renamed ``name`` and attached to the pool ``pool``."""
    doc = copy.deepcopy(job)
    doc["metadata"]["name"] = name
    doc["spec"].setdefault("inference", {})["pool"] = pool
    return doc
