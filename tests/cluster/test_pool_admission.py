"""The chart's admission policies of inference pools on the real API server (no operator, no node).

Each case (a job, the pools of its namespace) is judged twice: by the API server at create, through the chart's
ValidatingAdmissionPolicies, and by ``pool_verdict``, the operator's own check, on the pool as the API server
returns it. They must agree: what the operator refuses as PoolInAnotherNamespace or PoolMismatch is refused at
create, with the operator's very message; what it waits for (no such pool, or one being deleted) or admits is
admitted. Both are built from grpo_operator/api/pool_admission.py; this is the check that they do not drift.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import yaml
from controlplane import ControlPlane, wait_until

from grpo_operator.api import GROUP, VERSION, parse_job
from grpo_operator.api.pool import PLURAL as POOL_PLURAL
from grpo_operator.controller.pooling import pool_verdict
from support.cluster_jobs import CHART, create_job, get_job, on_pool, pool_manifest, wait_refused

pytestmark = pytest.mark.cluster

REFUSED = ("PoolInAnotherNamespace", "PoolMismatch")  # the reasons admission judges too
OTHER_MODEL = {"name": "Qwen/Qwen2.5-0.5B-Instruct"}
ON_VOLUME = {"path": "qwen", "volume": {"claimName": "models", "subPath": "hub/qwen"}, "servedName": "base"}


def job(name: str, pool: str, model: Optional[dict[str, Any]] = None, rank: Optional[int] = 8) -> dict[str, Any]:
    """The example job on ``pool``, its LoRA rank ``rank`` (None: trainKwargs.lora_config.r left out)."""
    doc = on_pool(name, pool)
    if model is not None:
        doc["spec"]["model"] = copy.deepcopy(model)
    lora = doc["spec"]["trainKwargs"]["lora_config"]
    lora["r"] = rank
    if rank is None:
        del lora["r"]
    return doc


@pytest.fixture(scope="module")
def policies(control_plane: ControlPlane, grpojob_crd: str) -> Iterator[list[dict[str, Any]]]:
    """The chart's policies and bindings (``helm template``, default values), applied; deleted after."""
    only = ("--show-only", "templates/admission-policy.yaml")
    manifest = control_plane.helm("template", "vap", str(CHART), *only).stdout
    control_plane.apply_yaml(manifest)
    yield [d for d in yaml.safe_load_all(manifest) if d]
    control_plane.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest)


def test_admission_refuses_what_the_operator_refuses_with_its_message_and_leaves_it_the_rest(
    control_plane: ControlPlane, policies: list[dict[str, Any]], namespace: str
):
    cp, ns = control_plane, namespace
    # a pool being deleted (held by a finalizer) first, then the others: the wait below, on the last one created,
    # then sees all of them in the API server's cache of pools
    going = pool_manifest("going", model=OTHER_MODEL)
    going["metadata"]["finalizers"] = ["grpo.test/keep"]
    cp.apply_yaml(yaml.safe_dump(going), ns)
    cp.kubectl("delete", "grpoinferencepool", "going", "-n", ns, "--wait=false")
    try:
        local = pool_manifest("local", model=ON_VOLUME, maxLoraRank=8)
        cp.apply_yaml(yaml.safe_dump_all([local, pool_manifest("shared")]), ns)  # maxLoraRank: its default, 16

        cases = [
            job("elsewhere", "team-b/shared"),
            job("othermodel", "shared", model=OTHER_MODEL),
            job("matching", "shared"),
            job("spelled-out", f"{ns}/shared"),
            job("spelled-out-other", f"{ns}/shared", model=OTHER_MODEL),
            job("rank-above", "shared", rank=32),
            job("rank-equal", "shared", rank=16),
            job("on-volume", "shared", model=ON_VOLUME),  # four differences, one message
            job("local", "local", model=ON_VOLUME, rank=None),  # the default rank, 8, is the pool's
            job("local-rank", "local", model=ON_VOLUME, rank=16),
            job("local-served", "local", model={**ON_VOLUME, "servedName": "qwen"}),
            job("local-subpath", "local", model={**ON_VOLUME, "volume": {"claimName": "models"}}, rank=None),
            job("no-pool-yet", "nope", model=OTHER_MODEL),  # left to the operator: PoolNotFound
            job("pool-going", "going"),  # the operator waits for a pool of the name: admitted
        ]
        by_name = {c["metadata"]["name"]: c for c in cases}
        wait_refused(cp, ns, by_name["elsewhere"])  # each policy active (the second with the pools in its cache)
        wait_refused(cp, ns, by_name["othermodel"])

        pools = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{POOL_PLURAL}"
        verdicts: dict[str, str] = {}
        for doc in cases:
            name, ref = doc["metadata"]["name"], doc["spec"]["inference"]["pool"]
            found, body = cp.request("GET", f"{pools}/{ref.rpartition('/')[2]}")  # what the operator reads
            pool = body if found == 200 else None
            verdict = pool_verdict(name, ns, parse_job(doc).spec, pool)
            assert verdict is not None
            status, body = create_job(cp, ns, doc, dry_run=True)
            verdicts[name] = verdict.reason or "ok"
            if verdict.reason in REFUSED:
                assert status == 422 and verdict.message in body["message"], (name, verdict.message, body)
            else:
                assert status == 201, (name, verdict.reason, body)
        assert verdicts == {
            "elsewhere": "PoolInAnotherNamespace",
            "othermodel": "PoolMismatch",
            "matching": "ok",
            "spelled-out": "ok",
            "spelled-out-other": "PoolMismatch",
            "rank-above": "PoolMismatch",
            "rank-equal": "ok",
            "on-volume": "PoolMismatch",
            "local": "ok",
            "local-rank": "PoolMismatch",
            "local-served": "PoolMismatch",
            "local-subpath": "PoolMismatch",
            "no-pool-yet": "PoolNotFound",
            "pool-going": "PoolNotFound",
        }

        # what a user sees: the field and the fix, and nothing stored
        status, body = create_job(cp, ns, by_name["elsewhere"])
        assert status == 422 and body["reason"] == "Invalid", body
        assert "spec.inference.pool 'team-b/shared' is in namespace 'team-b'" in body["message"]
        assert f"Create a GRPOInferencePool in '{ns}'" in body["message"]
        assert cp.kubectl("get", "grpojob", "elsewhere", "-n", ns, check=False).returncode != 0
        refused = cp.apply_yaml(yaml.safe_dump(by_name["on-volume"]), ns, check=False)
        assert refused.returncode != 0
        assert (
            "GRPOInferencePool 'shared' cannot serve this job: spec.model.name is unset, the pool's is "
            "'Qwen/Qwen2.5-1.5B-Instruct'; spec.model.path is 'qwen', the pool's is unset; spec.model.volume is "
            "{claimName: 'models', subPath: 'hub/qwen'}, the pool's is unset; spec.model.servedName is 'base', the "
            "pool's is unset. Name a pool of the job's base model and LoRA rank"
        ) in refused.stderr
        for name in ("matching", "no-pool-yet"):
            status, body = create_job(cp, ns, by_name[name])
            assert status == 201, body
        assert get_job(cp, ns, "no-pool-yet")["spec"]["inference"]["pool"] == "nope"

        # the policies type-check against the CRDs' schemas (the API server's status, set a moment after)
        for policy in (p for p in policies if p["kind"] == "ValidatingAdmissionPolicy"):
            name = policy["metadata"]["name"]
            stored = wait_until(
                lambda n=name: s if (s := cp.get_json("validatingadmissionpolicy", n)).get("status") else None,
                timeout=15,
                what=f"{name}'s type checking",
            )
            assert not stored["status"].get("typeChecking", {}).get("expressionWarnings"), stored["status"]
    finally:
        cp.kubectl("patch", "grpoinferencepool", "going", "-n", ns, "--type=merge", "-p",
                   '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
