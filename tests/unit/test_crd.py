"""The committed CRD is the generator's output, and it is a structural apiextensions/v1 schema."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
import yaml

from grpo_operator.api.crd import JOB, POOL, Resource, build_crd, render_crd
from support.jobdocs import ROOT

CRD_FILE = ROOT / "charts" / "grpo-operator" / "files" / "crd.yaml"
POOL_CRD_FILE = ROOT / "charts" / "grpo-operator" / "files" / "crd-pool.yaml"
BOTH = pytest.mark.parametrize("resource", [JOB, POOL], ids=lambda r: r.kind)
ALLOWED = {
    "type", "description", "properties", "required", "items", "additionalProperties", "enum", "default",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "maxProperties", "format", "x-kubernetes-validations", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _root(resource: Resource = JOB) -> dict[str, Any]:
    return build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_models():
    assert CRD_FILE.read_text() == render_crd(), (
        "charts/grpo-operator/files/crd.yaml is stale: run `grpo-operator-crd -o charts/grpo-operator/files/crd.yaml`"
    )
    assert POOL_CRD_FILE.read_text() == render_crd(POOL), (
        "charts/grpo-operator/files/crd-pool.yaml is stale: run "
        "`grpo-operator-crd --kind GRPOInferencePool -o charts/grpo-operator/files/crd-pool.yaml`"
    )


@BOTH
def test_schema_is_structural(resource: Resource):
    for path, node in _nodes(_root(resource)):
        unknown = set(node) - ALLOWED
        assert not unknown, f"{path}: keywords not allowed in a structural schema: {unknown}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for req in node.get("required", []):
            assert req in node.get("properties", {}), f"{path}: required {req} is not a property"
        if "default" in node and node.get("type") == "object":
            assert isinstance(node["default"], dict), path


@BOTH
def test_every_spec_field_is_documented_for_kubectl_explain(resource: Resource):
    spec = _root(resource)["properties"]["spec"]
    undocumented = [p for p, n in _nodes(spec) if p and not p.endswith("[]") and not p.endswith("}") and not n.get("description")]
    # toleration subfields carry their core/v1 meaning
    allowed = re.compile(r"\.tolerations\[\]\.(key|operator|value|effect|tolerationSeconds)$")
    missing = [p for p in undocumented if not allowed.search(p)]
    assert not missing, f"fields without a description: {missing}"
    if resource is JOB:
        assert "train_kwargs" in spec["properties"]["trainKwargs"]["description"]


@BOTH
def test_cel_rules_name_existing_fields(resource: Resource):
    for path, node in _nodes(_root(resource)):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"]
            field = rule.get("fieldPath")
            if field:
                target = node
                for part in field.strip(".").split("."):
                    assert part in target.get("properties", {}), f"{path}: fieldPath {field} not in schema"
                    target = target["properties"][part]
            for ref in re.findall(r"self\.([A-Za-z_][A-Za-z0-9_]*)", rule["rule"]):
                assert ref in node.get("properties", {}), f"{path}: rule references unknown field {ref}"


@BOTH
def test_printer_columns_read_declared_status_fields(resource: Resource):
    version = build_crd(resource)["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for col in version["additionalPrinterColumns"]:
        assert "[-1:]" not in col["jsonPath"], "use a [?(@.status==\"True\")] filter, not the last condition"
        m = re.match(r"\.(status|spec)\.(\w+)", col["jsonPath"])
        if m:
            declared = status if m.group(1) == "status" else spec
            assert m.group(2) in declared, f"printer column {col['name']} reads undeclared {m.group(1)}.{m.group(2)}"
    shown = {JOB.kind: ["State", "Step", "Max", "Reward", "Val", "Age"], POOL.kind: ["Ready", "Replicas", "Jobs", "Slots", "Used", "Loaded", "Age"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == shown[resource.kind]


def test_status_subresource_and_immutable_spec_fields():
    doc = yaml.safe_load(CRD_FILE.read_text())
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in ("program", "metric", "model", "data", "grpo", "trainKwargs"):
        assert any(r["rule"] == "self == oldSelf" for r in spec[field]["x-kubernetes-validations"]), field
    # storage: every field but retainOnDelete (the API server test changes both)
    (rule,) = [r["rule"] for r in spec["storage"]["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    for field in spec["storage"]["properties"]:
        assert (f"self.{field} == oldSelf.{field}" in rule) == (field != "retainOnDelete"), field
    for mutable in ("suspend", "runPolicy", "trainer"):
        assert not any("oldSelf" in r["rule"] for r in spec[mutable].get("x-kubernetes-validations", [])), mutable
    # inference: every field but pool (the job's run directory is on the pool's volume or on its own)
    (rule,) = [r["rule"] for r in spec["inference"]["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    assert re.findall(r"oldSelf\.(\w+)", rule) == ["pool", "pool"]


def test_a_renamed_argument_is_explained_under_both_names_and_defaulted_under_neither():
    """The API server defaults absent fields: a default for either name would sit beside the other one."""
    grpo = _root()["properties"]["spec"]["properties"]["grpo"]
    current, tutorial = grpo["properties"]["num_rollouts_per_grpo_step"], grpo["properties"]["num_samples_per_input"]
    assert "default" not in current and "default" not in tutorial
    assert "num_samples_per_input" in current["description"] and "num_rollouts_per_grpo_step" in tutorial["description"]
    assert (current["minimum"], current["maximum"]) == (tutorial["minimum"], tutorial["maximum"])
    assert grpo["default"]["num_samples_per_input"] == 8  # a job without grpo still gets the group size
