"""The chart's admission policies of inference pools are generated from the operator's own checks
(grpo_operator/api/pool_admission.py): the committed file is the generator's output, and the CEL covers every
field the Python compares. That the two judge alike is checked on the real API server, case by case:
tests/cluster/test_pool_admission.py."""

from __future__ import annotations

import copy

import pytest
import yaml

from grpo_operator.api import parse_job
from grpo_operator.api.crd import JOB, build_crd
from grpo_operator.api.crd import POOL as POOL_RESOURCE
from grpo_operator.api.pool import parse_pool_spec
from grpo_operator.api.pool_admission import (
    MATCHED_MODEL_FIELDS,
    admission_policies,
    another_namespace,
    cel_template,
    mismatch,
    render_admission_policies,
)
from grpo_operator.api.spec import LocalModel
from support.jobdocs import ROOT, load_example

POLICIES_FILE = ROOT / "charts" / "grpo-operator" / "files" / "admission-policies.yaml"
POOL = {"model": {"name": "Qwen/Qwen2.5-1.5B-Instruct"}, "storage": {}}  # the example job's model


def test_committed_policies_match_the_generator():
    assert POLICIES_FILE.read_text() == render_admission_policies(), (
        "charts/grpo-operator/files/admission-policies.yaml is stale: run "
        "`grpo-operator-crd --admission-policies -o charts/grpo-operator/files/admission-policies.yaml`"
    )
    assert yaml.safe_load(POLICIES_FILE.read_text()) == admission_policies()  # no YAML anchors for helm to resolve
    assert "&id" not in POLICIES_FILE.read_text()


def test_a_template_compiles_to_a_cel_concatenation_with_its_quotes_escaped():
    expr = cel_template("pool '{name}' of \"{ns}\": {why}", {"why": "too small"}, name="params.metadata.name", ns="x")
    assert expr == '"pool \'" + (params.metadata.name) + "\' of \\"" + (x) + "\\": too small"'


@pytest.mark.parametrize(
    "model, line",
    [
        ({"name": "other/model"}, "spec.model.name is 'other/model', the pool's is 'Qwen/Qwen2.5-1.5B-Instruct'"),
        (
            {"name": "Qwen/Qwen2.5-1.5B-Instruct", "servedName": "qwen"},
            "spec.model.servedName is 'qwen', the pool's is unset",
        ),
        (
            {"path": "q", "volume": {"claimName": "models", "subPath": "hub"}},
            "spec.model.volume is {claimName: 'models', subPath: 'hub'}, the pool's is unset",
        ),
    ],
)
def test_each_model_field_the_pool_serves_must_match_and_is_named(model: dict, line: str):
    doc = load_example()
    doc["spec"]["model"] = model
    assert line in mismatch(parse_job(doc).spec, parse_pool_spec(copy.deepcopy(POOL)))


def test_what_the_pool_chooses_for_itself_is_not_compared():
    doc = load_example()
    doc["spec"]["model"].update({"dtype": "bfloat16", "maxModelLen": 4096})
    assert mismatch(parse_job(doc).spec, parse_pool_spec(copy.deepcopy(POOL))) == []
    assert set(LocalModel.model_fields) - set(MATCHED_MODEL_FIELDS) == {"hub", "max_model_len", "dtype"}


def test_the_cel_compares_every_field_the_operator_does_and_the_rank_with_its_defaults():
    (differences,) = [
        v["expression"] for v in admission_policies()["pool-model"]["policy"]["variables"] if v["name"] == "differences"
    ]
    for wire in ("name", "path", "volume", "servedName"):
        assert f"object.spec.model.?{wire} == params.spec.model.?{wire}" in differences
    # the job's rank when trainKwargs.lora_config.r is left out, the pool's when maxLoraRank is: what the API server
    # defaults them to
    job = build_crd(JOB)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    pool = build_crd(POOL_RESOURCE)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    job_rank = job["trainKwargs"]["properties"]["lora_config"]["properties"]["r"]["default"]
    pool_rank = pool["properties"]["maxLoraRank"]["default"]
    rank = f"object.spec.?trainKwargs.?lora_config.?r.orValue({job_rank})"
    assert f"{rank} <= params.spec.?maxLoraRank.orValue({pool_rank})" in differences


def test_a_reference_to_the_jobs_own_namespace_written_out_is_its_own():
    assert another_namespace("team-a/shared", "team-a") is None and another_namespace("shared", "team-a") is None
    assert another_namespace("team-b/shared", "team-a") == (
        "spec.inference.pool 'team-b/shared' is in namespace 'team-b'; a job uses only a pool of its own namespace "
        "'team-a' (a pool is one tenant's: its jobs share its key). Create a GRPOInferencePool in 'team-a' and name "
        "it, or remove spec.inference.pool for a vLLM pod of the job's own"
    )
