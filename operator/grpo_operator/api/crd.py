"""Generate the CustomResourceDefinitions (GRPOJob, GRPOInferencePool) from the pydantic models.

The models are the single source of truth; the CRDs committed in the chart are this
module's output (``grpo-operator-crd -o charts/grpo-operator/files/crd.yaml`` and
``grpo-operator-crd --kind GRPOInferencePool -o charts/grpo-operator/files/crd-pool.yaml``),
and a test fails when they drift apart. So are the chart's admission policies of inference pools
(``grpo-operator-crd --admission-policies -o charts/grpo-operator/files/admission-policies.yaml``,
from api/pool_admission.py).

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3
schema, so the conversion inlines references, turns ``X | None`` into
an optional ``X``, ``int | str`` into ``x-kubernetes-int-or-string``, numeric
``exclusiveMinimum`` into the boolean form, and bounds every string and list (the
API server estimates CEL costs from those bounds and rejects unbounded rules).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from grpo_operator.api import pool
from grpo_operator.api.job import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, GRPOJob
from grpo_operator.api.pool_admission import render_admission_policies
from grpo_operator.api.spec import GRPOJobSpec
from grpo_operator.api.status import GRPOJobStatus
from grpo_trainer.contract.rules import RuledModel

DEFAULT_MAX_STRING = 4096
DEFAULT_MAX_ITEMS = 1024

PRINTER_COLUMNS: list[dict[str, Any]] = [
    # conditions are kept most-decisive first, so the first True one is the state.
    {"name": "State", "type": "string", "jsonPath": '.status.conditions[?(@.status=="True")].type'},
    {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
    {"name": "Max", "type": "integer", "jsonPath": ".status.maxSteps"},
    {"name": "Reward", "type": "number", "jsonPath": ".status.trainReward"},
    {"name": "Val", "type": "number", "jsonPath": ".status.valScore"},
    {"name": "Best", "type": "number", "jsonPath": ".status.bestValScore", "priority": 1},
    {"name": "Adapter", "type": "string", "jsonPath": ".status.adapterVersion", "priority": 1},
    {"name": "Result", "type": "string", "jsonPath": ".status.result.adapter", "priority": 1},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.status=="True")].reason',
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

POOL_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Jobs", "type": "string", "jsonPath": ".status.jobs[*].name"},
    {"name": "Slots", "type": "integer", "jsonPath": ".status.slots"},
    {"name": "Used", "type": "integer", "jsonPath": ".status.slotsUsed"},
    {"name": "Loaded", "type": "integer", "jsonPath": ".status.adaptersLoaded"},
    {"name": "Results", "type": "integer", "jsonPath": ".status.resultsServed", "priority": 1},
    {"name": "Waiting", "type": "string", "jsonPath": ".status.waiting", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class Resource:
    """One custom resource of the API: its models and names."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    root: type[RuledModel]
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: list[dict[str, Any]]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


JOB = Resource(KIND, PLURAL, SINGULAR, SHORT_NAMES, GRPOJob, GRPOJobSpec, GRPOJobStatus, PRINTER_COLUMNS)
POOL = Resource(
    pool.KIND,
    pool.PLURAL,
    pool.SINGULAR,
    pool.SHORT_NAMES,
    pool.GRPOInferencePool,
    pool.GRPOInferencePoolSpec,
    pool.GRPOInferencePoolStatus,
    POOL_PRINTER_COLUMNS,
)
RESOURCES = {r.kind: r for r in (JOB, POOL)}

_DROP = {"title", "$defs"}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Overlay a field's own keywords on its referenced definition."""
    merged = dict(base)
    for key, value in extra.items():
        if key == "x-kubernetes-validations":
            merged[key] = list(base.get(key, [])) + list(value)
        else:
            merged[key] = value
    return merged


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _structural(_merge(target, siblings), defs)
    if "anyOf" in node:
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            out = _structural(_merge(options[0] if "$ref" not in options[0] else _structural(options[0], defs), rest), defs)
        elif {o.get("type") for o in options} == {"integer", "string"}:
            # The string form's own bounds stay (a quantity's pattern, as controller-gen emits it), and the
            # integer form's (its minimum); the API server checks each on values of its own type.
            (text,) = [o for o in options if o.get("type") == "string"]
            (number,) = [o for o in options if o.get("type") == "integer"]
            bounds = {k: v for k, v in text.items() if k in ("pattern", "maxLength")}
            bounds.update((k, v) for k, v in number.items() if k in ("minimum", "maximum"))
            out = _structural({**rest, **bounds, "x-kubernetes-int-or-string": True}, defs)
        else:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        # No `nullable`: the API server prunes nulls of non-nullable fields before
        # defaulting, so `max_prompt_length: null` (as the tutorial writes it)
        # becomes "unset", which is what None means in the models.
        if "default" in out and out["default"] is None:
            del out["default"]
        return out
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue  # forbidden in structural schemas; unknown fields are pruned/rejected instead
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "string" and "enum" not in out and "maxLength" not in out:
        out["maxLength"] = DEFAULT_MAX_STRING
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = DEFAULT_MAX_ITEMS
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural schema of one pydantic model, as the CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def build_crd(resource: Resource = JOB) -> dict[str, Any]:
    """The complete CustomResourceDefinition document of one resource (default: GRPOJob)."""
    spec_schema = openapi_schema(resource.spec)
    status_schema = openapi_schema(resource.status)
    root = {
        "type": "object",
        "description": (resource.root.__doc__ or "").strip(),
        "required": ["spec"],
        # rules that need metadata.name, which CEL sees only at the root; metadata has no properties in the
        # schema, so a fieldPath cannot point into it: the message names the field
        "x-kubernetes-validations": [
            {"rule": r.cel, "message": f"{r.field}: {r.message}"} for r in resource.root.rules
        ],
        "properties": {
            "apiVersion": {"type": "string", "description": "grpo.dev/v1alpha1"},
            "kind": {"type": "string", "description": resource.kind},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/name": "grpo-operator", "app.kubernetes.io/component": "crd"},
            # helm uninstall must not delete every GRPOJob (GRPOInferencePool) with the CRD.
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["grpo"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": resource.printer_columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `grpo-operator-crd` from operator/grpo_operator/api (the pydantic models). Do not edit.\n"


def render_crd(resource: Resource = JOB) -> str:
    return HEADER + yaml.safe_dump(build_crd(resource), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Print a CRD of {API_VERSION} generated from the models.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--kind", choices=sorted(RESOURCES), default=KIND, help=f"which resource (default: {KIND})")
    what.add_argument(
        "--admission-policies",
        action="store_true",
        help="the chart's ValidatingAdmissionPolicies of inference pools instead (api/pool_admission.py)",
    )
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render_admission_policies() if args.admission_policies else render_crd(RESOURCES[args.kind])
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
