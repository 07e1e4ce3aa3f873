"""The generated admission corpus (API server only: no operator, no pod runs).

Every field of the CRD's spec (the GRPOJob's, and the GRPOInferencePool's), mutated every way
(tests/support/mutations.py), is sent to the real API server: each mutation is either refused naming
the field, or accepted and then survives pydantic, the job's (the pool's) resolution, every child
builder and the API server's dry run of every child
(tests/support/admission.py). Mutations go with field validation Ignore (what a lenient client
sends: unknown keys pruned, so a declared inline-secret key must be refused by a rule), and the
unknown keys once more with Strict. pydantic must refuse whatever the API server refuses (the
local runner parses the same job). The counts are printed; bench/RESULTS.md (section
admission_corpus) records them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from grpo_operator.api import GROUP, VERSION
from grpo_operator.api.pool import PLURAL as POOL_PLURAL
from support.admission import VALID_REFUSED, VERDICTS, Judge, count
from support.cluster_jobs import CRD_FILE, POOL_CRD_FILE, RESTRICTED
from support.mutations import generate, seed_job, seed_pool


@pytest.fixture
def restricted_namespace(control_plane: ControlPlane, grpojob_crd: str):
    name = control_plane.create_namespace(f"admission-{uuid.uuid4().hex[:5]}", labels=RESTRICTED)
    yield name
    control_plane.delete_namespace(name)


def judged(control_plane: ControlPlane, namespace: str, crd: Path, seed: dict[str, Any], what: str) -> None:
    """Send the corpus of ``seed`` (every field of ``crd``'s spec mutated) and assert on the outcomes."""
    root = yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    judge = Judge(control_plane.session(), namespace)
    t0 = time.monotonic()
    corpus = generate(seed, root["properties"]["spec"])
    try:
        outcomes = judge.run(corpus.mutations)
    finally:
        judge.clean_up()
    counts = count(outcomes, corpus, judge.children_sent, time.monotonic() - t0)
    print(f"\nadmission corpus ({what})\n" + counts.table())

    assert not corpus.no_sample, f"no sample of STRING_POOL fits these fields; add one: {corpus.no_sample}"
    failing = [o.line() for o in outcomes if o.verdict in (VERDICTS[2], VERDICTS[3], VALID_REFUSED)]
    assert not failing, f"{len(failing)} mutations:\n" + "\n".join(failing[:60])
    # pydantic and the CRD agree: what the API server refuses, the local runner (and the operator) refuse too
    lenient = [o.mutation.label for o in outcomes if not o.pydantic_agrees]
    assert not lenient, f"refused by the API server, accepted by pydantic: {lenient}"


def test_every_mutation_is_refused_naming_its_field_or_runs(control_plane: ControlPlane, restricted_namespace: str):
    judged(control_plane, restricted_namespace, CRD_FILE, seed_job(), "GRPOJob")


def test_every_mutation_of_a_pool_is_refused_naming_its_field_or_runs(
    control_plane: ControlPlane, restricted_namespace: str
):
    """The pool's corpus: its own rules (maxCpuLoras at least maxLoras, its name) among every field's; an accepted
    pool renders its volume, ConfigMap, Service and server, and the trainer of a job on it. Then the rules a create
    cannot reach: its model and storage are immutable."""
    judged(control_plane, restricted_namespace, POOL_CRD_FILE, seed_pool(), "GRPOInferencePool")
    session = control_plane.session()
    pools = f"/apis/{GROUP}/{VERSION}/namespaces/{restricted_namespace}/{POOL_PLURAL}"
    status, stored = session.request("POST", pools, seed_pool())
    assert status == 201, stored
    for field, value in (("model", {"name": "Qwen/Qwen2.5-0.5B-Instruct"}), ("storage", {"size": "1Gi"})):
        changed = {**stored, "spec": {**stored["spec"], field: value}}
        status, body = session.request("PUT", f"{pools}/shared?dryRun=All", changed)
        assert status == 422 and f"spec.{field}" in body["message"] and "is immutable" in body["message"], body
