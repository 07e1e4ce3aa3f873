"""Three jobs train at once on one inference pool, on the process node, and each learns.

Issue #20's proof: the embedded default three times (training seeds 0, 1, 2), each a GRPOJob with
``spec.inference.pool`` naming one GRPOInferencePool, so that one vLLM server (the pool's, its CPU build)
samples for three trainers that run side by side. Each job must end Succeeded with a validation gain beyond
the noise that ``bench/run.sh learning`` measured for the default (tests/support/learning.py: the same
margin, at the same step count, as the local learning proofs), and with the trainer's served-adapter check
passing for its own last version, served under its own name (``<job>-policy-vN``) by the shared server;
then it unloads its versions, giving the pool's slots back.

On demand only (marker ``ondemand``): three learning runs on two cores take about 23 minutes, which CI's
budget (issue #15) has no room for. Run it with ``bash scripts/test.sh tests/cluster/test_pool_training.py``.

Fakes, and why: as in test_training_e2e.py, the pool's GPU is advertised by the process node, not real, and
vLLM is its CPU build; the images' contents are this machine's Python environment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, wait_until
from processnode import NODE_LABEL, TOLERATION, ProcessNode, process_node

from grpo_operator.local.default import default_job, default_model_dir
from grpo_operator.local.plan import with_steps
from grpo_trainer.embedded.bundled import PII_DELEGATION
from support.chart import chart_operator
from support.checkout import SOURCE_DIRS
from support.claims import claim_dir, read_only_claim
from support.cluster_jobs import RESTRICTED, apply_jobs, cond, get_job, is_true, wait_job
from support.learning import assert_learned_and_served, proof_steps
from support.operator import OperatorProcess, free_port

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.processnode,
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.ondemand,
    pytest.mark.timeout(2400),
]

POOL = "shared"
JOBS = ("pii-a", "pii-b", "pii-c")  # training seeds 0, 1, 2: the seeds bench/learning.json's gains came from
PLACEMENT = {"nodeSelector": {NODE_LABEL: "true"}, "tolerations": [TOLERATION]}
SMALL = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}


@pytest.fixture(scope="module")
def pool_ns(control_plane: ControlPlane) -> Iterator[str]:
    ns = control_plane.create_namespace(f"pool-training-{uuid.uuid4().hex[:5]}", labels=RESTRICTED)
    yield ns
    control_plane.kubectl("delete", "grpojobs", "--all", "-n", ns, "--wait=true", "--timeout=60s", check=False)
    control_plane.delete_namespace(ns)


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessNode]:
    with process_node(control_plane, "pool-node-0", tmp_path_factory.mktemp("pool-node-0"), SOURCE_DIRS, gpus=1) as n:
        yield n
    assert not n.errors, n.errors


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, pool_ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("pool-training-operator") / "operator.log"
    with chart_operator(control_plane, "grpo-pool", pool_ns, log, {"GRPO_INFERENCE_PORT": str(free_port())}) as proc:
        yield proc


def model_on_claim(model_dir: Path) -> dict[str, Any]:
    # fp32 like the trainer on a CPU, for the served-adapter check (as in test_training_e2e.py)
    return {"path": model_dir.name, "volume": {"claimName": "models"}, "dtype": "float32"}


def pool_document(model_dir: Path) -> dict[str, Any]:
    """The pool for the default's model: one server (one advertised GPU), a slot set per job."""
    return {
        "apiVersion": "grpo.dev/v1alpha1",
        "kind": "GRPOInferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "model": model_on_claim(model_dir),
            "maxLoras": 6,  # a batch may mix two versions of each job (rollouts of one step, the next published)
            "maxCpuLoras": 4 * len(JOBS),
            "maxLoraRank": 16,
            # the CPU build's one flag (processnode.py); the pool's volume is ReadWriteOnce: its trainers join it
            "server": {**PLACEMENT, "extraArgs": ["--no-enable-chunked-prefill"], "resources": SMALL},
        },
    }


def job_document(model_dir: Path, name: str, seed: int) -> dict[str, Any]:
    """The embedded default, unchanged but for its name, seed, step count (the proof's), where its model and data
    are, and the pool it samples through."""
    doc = with_steps(default_job(model_dir), proof_steps())
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec["grpo"]["seed"] = seed
    spec["model"] = model_on_claim(model_dir)
    spec["data"] = {
        split: {"file": {"path": f"{file}.jsonl", "format": "jsonl", "volume": {"claimName": "pii-data"}}}
        for split, file in (("train", "train"), ("validation", "val"))
    }
    spec["inference"] = {"pool": POOL}
    # Three trainers and a server on two cores (a cluster would give each pod cores of its own): OpenMP threads
    # that sleep when idle, as grpo-local gives CPU processes that compute side by side (resolve._cpu_sharing_env).
    env = [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}]
    spec["trainer"] = {**PLACEMENT, "resources": SMALL, "env": env}
    spec["runPolicy"] = {"backoffLimit": 1}
    return doc


def test_three_default_jobs_on_one_pool_train_side_by_side_and_each_learns_and_is_served_under_its_name(
    control_plane: ControlPlane, pool_ns: str, node: ProcessNode, operator: OperatorProcess
):
    cp, ns = control_plane, pool_ns
    model_dir = default_model_dir()
    read_only_claim(cp, ns, "models", model_dir.parent)
    read_only_claim(cp, ns, "pii-data", PII_DELEGATION)
    cp.apply_yaml(yaml.safe_dump(pool_document(model_dir)), ns)
    apply_jobs(cp, ns, *(job_document(model_dir, name, seed) for seed, name in enumerate(JOBS)), secret=False)

    # all three train at once, each with a first step done, through the one server of the pool
    def all_stepping() -> list[dict[str, Any]] | None:
        jobs = [get_job(cp, ns, name) for name in JOBS]
        return jobs if all(j.get("status", {}).get("step", 0) >= 1 for j in jobs) else None

    jobs = wait_until(all_stepping, timeout=1200, what="every job's first step")
    assert not any(is_true("Succeeded")(j) for j in jobs), "the jobs did not overlap"
    for job in jobs:
        assert job["status"]["inferencePool"] == POOL and cond(job, "InferenceReady")["reason"] == "PoolReady"
    pods = cp.get_json("pods", namespace=ns)["items"]
    servers = [p["metadata"]["name"] for p in pods if "-vllm-" in p["metadata"]["name"]]
    assert servers == [f"{POOL}-vllm-0"], servers  # no job has a vLLM pod of its own
    pool = cp.get_json("grpoinferencepool", POOL, namespace=ns)
    assert sorted(j["name"] for j in pool["status"]["jobs"]) == list(JOBS), pool["status"]

    volume = claim_dir(cp, ns, f"{POOL}-adapters")
    for name in JOBS:
        job = wait_job(cp, ns, name, is_true("Succeeded"), f"{name} Succeeded=True", timeout=1800)
        status = job["status"]
        print(f"{name}: validation {status['baselineValScore']:.4f} -> best {status['bestValScore']:.4f}")
        assert status["runPath"] == f"runs/{name}" and status["restarts"] == 0, status
        config = json.loads(cp.get_json("configmap", f"{name}-config", namespace=ns)["data"]["config.json"])
        assert_learned_and_served(
            volume / status["runPath"], adapter_prefix=f"{name}-", trainers_run_dir=Path(config["run_dir"])
        )
        # then it gave the pool's slots back: every version it had loaded unloaded, the last one included
        records = [json.loads(line) for line in node.logs(ns, status["trainerPod"]).splitlines() if line[:1] == "{"]
        (released,) = [r for r in records if r.get("msg") == "unloaded the run's versions from the shared server"]
        assert f"{name}-policy-v{proof_steps()}" in released["adapters"], released
        assert all(a.startswith(f"{name}-policy-v") for a in released["adapters"]), released
    pool = cp.get_json("grpoinferencepool", POOL, namespace=ns)
    assert not pool["status"].get("jobs") and not pool["status"].get("adaptersLoaded"), pool["status"]
