"""The generated CRD in a real API server: applies, accepts the seed, rejects bad jobs itself."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from controlplane import wait_until

from grpo_operator.api import GROUP, PLURAL, VERSION
from support.jobdocs import INVALID_CASES, load_example, mutated

SERVER_CASES = [c for c in INVALID_CASES if c.get("server")]
SECRET_CASES = [c for c in INVALID_CASES if c.get("secret")]


def test_crd_established_with_printer_columns(control_plane, grpojob_crd):
    crd = control_plane.get_json("crd", grpojob_crd)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    # the OpenAPI document that `kubectl explain` reads is published a moment after Established
    explained = wait_until(
        lambda: control_plane.kubectl("explain", "grpojob.spec.trainKwargs", check=False).stdout,
        timeout=60,
        what="kubectl explain grpojob.spec.trainKwargs",
    )
    assert "train_kwargs" in explained and "lora_config" in explained


def test_seed_example_accepted_and_defaulted(control_plane, grpojob_crd, namespace):
    control_plane.apply_yaml(yaml.safe_dump(load_example()), namespace)
    job = control_plane.get_json("grpojob", "papillon", namespace=namespace)
    assert job["spec"]["trainKwargs"]["lora_config"]["r"] == 8
    assert job["spec"]["trainKwargs"]["num_training_gpus"] == 3
    # defaults the API server filled in from the schema
    assert job["spec"]["grpo"]["failure_score"] == 0
    assert job["spec"]["inference"]["resources"] == {"requests": {}, "limits": {}}
    # null in the tutorial's style means "unset"
    assert "max_prompt_length" not in job["spec"]["trainKwargs"]
    table = control_plane.kubectl("get", "grpojobs", "-n", namespace).stdout
    assert table.split("\n")[0].split() == ["NAME", "STATE", "STEP", "MAX", "REWARD", "VAL", "AGE"]


def test_a_current_notebooks_names_are_accepted_and_explained(control_plane, grpojob_crd, namespace):
    """num_rollouts_per_grpo_step alone is admitted (no default of the other name appears beside it)."""
    doc = load_example()
    grpo = doc["spec"]["grpo"]
    grpo["num_rollouts_per_grpo_step"] = grpo.pop("num_samples_per_input")
    grpo.update(checkpoint="improvements", variably_invoked_predictor_grouping_mode="ragged", adapter="xml")
    control_plane.apply_yaml(yaml.safe_dump(doc), namespace)
    stored = control_plane.get_json("grpojob", "papillon", namespace=namespace)["spec"]["grpo"]
    assert stored["num_rollouts_per_grpo_step"] == 8 and "num_samples_per_input" not in stored
    explained = wait_until(  # the OpenAPI document is published a moment after the CRD is established
        lambda: control_plane.kubectl("explain", "grpojob.spec.grpo.num_rollouts_per_grpo_step", check=False).stdout,
        timeout=60,
        what="kubectl explain grpojob.spec.grpo.num_rollouts_per_grpo_step",
    )
    assert "num_samples_per_input" in explained


def test_enough_server_side_cases():
    assert len(SERVER_CASES) >= 10


@pytest.fixture(scope="module")
def cases_namespace(control_plane, grpojob_crd):
    """One namespace for every invalid case: a refused job leaves nothing in it."""
    name = control_plane.create_namespace(f"invalid-cases-{uuid.uuid4().hex[:5]}")
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture(scope="module")
def api(control_plane):
    return control_plane.session()


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c["name"] for c in SERVER_CASES])
def test_api_server_rejects_invalid_job(api, cases_namespace, case):
    """Created as kubectl would (strict field validation), over one kept-alive connection: a hundred cases in
    seconds. What kubectl prints is the same message (test_pasted_secrets... runs kubectl itself)."""
    doc = mutated(case)
    jobs = f"/apis/{GROUP}/{VERSION}/namespaces/{cases_namespace}/{PLURAL}"
    status, body = api.request("POST", f"{jobs}?fieldValidation=Strict", doc)
    assert status >= 400, f"API server accepted {case['name']}"
    assert case["field"] in body["message"], body["message"]
    assert api.request("GET", f"{jobs}/{doc['metadata']['name']}")[0] == 404, "a rejected job must not be stored"


def test_pasted_secrets_are_refused_whatever_the_clients_field_validation(control_plane, grpojob_crd, namespace):
    """A client-side apply that does not validate (the API server prunes unknown fields then) is refused too: the
    secret never reaches a stored object, whose last-applied-configuration annotation would keep the manifest."""
    assert len(SECRET_CASES) >= 5
    for case in SECRET_CASES:
        text = yaml.safe_dump(mutated(case))
        result = control_plane.kubectl("apply", "--validate=false", "-n", namespace, "-f", "-", input=text, check=False)
        assert result.returncode != 0, f"API server accepted {case['name']} with --validate=false"
        assert case["field"] in result.stderr and "Secret" in result.stderr, result.stderr
    listed = json.loads(control_plane.kubectl("get", "grpojobs", "-n", namespace, "-o", "json").stdout)
    assert listed["items"] == [], "a refused job must not be stored"


def test_run_defining_fields_are_immutable(control_plane, grpojob_crd, namespace):
    control_plane.apply_yaml(yaml.safe_dump(load_example()), namespace)
    patch = json.dumps({"spec": {"trainKwargs": {"learning_rate": 0.001}}})
    result = control_plane.kubectl(
        "patch", "grpojob", "papillon", "-n", namespace, "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0 and "immutable" in result.stderr, result.stderr
    ok = control_plane.kubectl(
        "patch", "grpojob", "papillon", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}', check=False
    )
    assert ok.returncode == 0, ok.stderr
    # the volume: its size and class are fixed, whether to keep it may be decided late
    for change in ({"size": "999Gi"}, {"storageClassName": "fast"}):
        refused = control_plane.kubectl(
            "patch", "grpojob", "papillon", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"storage": change}}), check=False,
        )  # fmt: skip
        assert refused.returncode != 0 and "except retainOnDelete" in refused.stderr, (change, refused.stderr)
    keep = json.dumps({"spec": {"storage": {"retainOnDelete": True}}})
    ok = control_plane.kubectl("patch", "grpojob", "papillon", "-n", namespace, "--type=merge", "-p", keep, check=False)
    assert ok.returncode == 0, ok.stderr
    assert control_plane.get_json("grpojob", "papillon", namespace=namespace)["spec"]["storage"]["retainOnDelete"]
    # where the result is exported may be set and changed at any time (grpo export, on a finished job)
    for path in ("grpo/papillon", "grpo/papillon-2"):
        export = json.dumps({"spec": {"export": {"destinations": [{"claim": {"claimName": "models", "path": path}}]}}})
        ok = control_plane.kubectl(
            "patch", "grpojob", "papillon", "-n", namespace, "--type=merge", "-p", export, check=False
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
    exported = control_plane.get_json("grpojob", "papillon", namespace=namespace)["spec"]["export"]
    assert exported["destinations"][0]["claim"]["path"] == "grpo/papillon-2" and exported["backoffLimit"] == 2


def test_resources_with_requests_only_are_accepted(control_plane, grpojob_crd, namespace):
    """Rules must not trip over what the API server does not default: an absent ``limits`` map, an
    inference object without ``extraArgs``."""
    doc = load_example()
    doc["spec"]["trainer"] = {"resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}
    doc["spec"]["inference"] = {"nodeSelector": {"pool": "gpu"}}
    control_plane.apply_yaml(yaml.safe_dump(doc), namespace)
    job = control_plane.get_json("grpojob", "papillon", namespace=namespace)
    assert job["spec"]["trainer"]["resources"]["requests"]["memory"] == "64Gi"
    assert job["spec"]["inference"]["nodeSelector"] == {"pool": "gpu"}
