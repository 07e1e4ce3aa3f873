"""The GRPOInferencePool API: defaults, and bad pools refused naming the field and the fix (pydantic here;
the same rules as CEL in the API server: tests/cluster/test_admission_corpus.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from grpo_operator.api.pool import SLOTS_PER_JOB, InvalidPool, parse_pool

POOL: dict[str, Any] = {
    "apiVersion": "grpo.dev/v1alpha1",
    "kind": "GRPOInferencePool",
    "metadata": {"name": "shared"},
    "spec": {"model": {"name": "Qwen/Qwen2.5-1.5B-Instruct"}},
}


def pool_doc(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(POOL)
    doc["spec"].update(spec)
    return doc


def test_a_minimal_pool_gets_one_gpu_server_with_slots_for_one_job():
    spec = parse_pool(pool_doc()).spec
    assert (spec.replicas, spec.gpus_per_replica, spec.max_loras, spec.max_lora_rank) == (1, 1, 4, 16)
    assert spec.slots == 4 == SLOTS_PER_JOB
    assert parse_pool(pool_doc(maxLoras=4, maxCpuLoras=12)).spec.slots == 12
    assert spec.storage.access_mode == "ReadWriteOnce" and spec.storage.size == "20Gi"


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        ({"maxLoras": 8, "maxCpuLoras": 4}, "spec.maxCpuLoras", "at least maxLoras"),
        ({"replicas": 2}, "spec.replicas", "less than or equal to 1"),
        ({"maxLoraRank": 12}, "spec.maxLoraRank", "16"),
        ({"server": {"extraArgs": ["--api-key=x"]}}, "spec.server.extraArgs", "remove the flag"),
        ({"storage": {"accessMode": "ReadWriteOncePod"}}, "spec.storage.accessMode", "ReadWriteMany"),
        ({"model": {"name": "a", "path": "/b"}}, "spec.model", "exactly one of name, path"),
        ({"storage": {"retainOnDelete": True}}, "spec.storage.retainOnDelete", "not permitted"),
    ],
)
def test_a_bad_pool_is_refused_naming_the_field(changes: dict[str, Any], field: str, fix: str):
    with pytest.raises(InvalidPool) as err:
        parse_pool(pool_doc(**changes))
    text = "\n".join(err.value.problems)
    assert field in text and fix in text, text
    assert str(err.value).startswith("invalid GRPOInferencePool")


def test_a_pool_name_that_cannot_label_its_pods_is_refused():
    doc = pool_doc()
    doc["metadata"]["name"] = "shared.pool"
    with pytest.raises(InvalidPool, match="metadata.name: a pool's name is at most"):
        parse_pool(doc)
