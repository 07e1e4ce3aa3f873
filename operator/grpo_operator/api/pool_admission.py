"""What a job must share with the inference pool it names, judged twice from one table.

The operator judges a job against the pool it finds at every reconcile (controller/pooling.py:
``pool_verdict``), and refuses, creating nothing, a job that may not use it. The chart's
ValidatingAdmissionPolicies judge the same at create, so the API server refuses the job before
it exists; CRD rules cannot, as they see neither another object nor the job's namespace. Both
read this module: the Python checks (:func:`another_namespace`, :func:`mismatch`) and the
policies' CEL (:func:`admission_policies`) are built from the same fields, defaults and message
templates, so the two cannot drift: ``charts/grpo-operator/files/admission-policies.yaml`` is
this module's output (``grpo-operator-crd --admission-policies``), a test fails when it is
stale, and another runs both on the same cases on the real API server.

What admission cannot judge stays the operator's: a job created before its pool (admitted; it
waits, PoolNotFound), and a pool created, changed (its ``maxLoraRank``) or deleted after its jobs.
"""

from __future__ import annotations

import json
import string
import typing
from typing import Any, Optional

import yaml
from pydantic import BaseModel

from grpo_operator.api.job import API_VERSION, GROUP, PLURAL
from grpo_operator.api.pool import KIND as POOL_KIND
from grpo_operator.api.pool import GRPOInferencePoolSpec
from grpo_operator.api.spec import GRPOJobSpec, LocalModel
from grpo_trainer.contract.hparams import LoraConfig, TrainKwargs

# The fields of spec.model a job's and its pool's must agree on (attributes of LocalModel): the weights the
# server loads and the name it serves them under. The rest (hub, maxModelLen, dtype) is the pool's to choose.
MATCHED_MODEL_FIELDS: tuple[str, ...] = ("name", "path", "volume", "served_name")
# What the rank of a job or a pool is when its manifest omits it (the API server defaults both; CEL must not
# rely on that for an object stored before a default was added).
DEFAULT_JOB_RANK: int = LoraConfig.model_fields["r"].default
DEFAULT_POOL_RANK: int = GRPOInferencePoolSpec.model_fields["max_lora_rank"].default

# The messages, as str.format templates: formatted in Python, compiled into CEL string concatenations.
ANOTHER_NAMESPACE = (
    "spec.inference.pool '{ref}' is in namespace '{ns}'; a job uses only a pool of its own namespace "
    "'{namespace}' (a pool is one tenant's: its jobs share its key). Create a GRPOInferencePool in "
    "'{namespace}' and name it, or remove spec.inference.pool for a vLLM pod of the job's own"
)
MODEL_DIFFERS = "spec.model.{field} is {mine}, the pool's is {theirs}"
RANK_ABOVE = "trainKwargs.lora_config.r is {rank}, above the pool's maxLoraRank {max_rank}"
CANNOT_SERVE = (
    "GRPOInferencePool '{name}' cannot serve this job: {differences}. Name a pool of the job's base model and "
    "LoRA rank, or remove spec.inference.pool for a vLLM pod of the job's own"
)
UNSET = "unset"


def _wire(model: type[BaseModel], attribute: str) -> str:
    """A field's name in a manifest."""
    info = model.model_fields[attribute]
    return info.alias or attribute


# --------------------------------------------------------------------------- Python: the operator's verdict


def pool_name(ref: str, namespace: str) -> tuple[str, str]:
    """(namespace, name) of a spec.inference.pool reference: NAME, or NAMESPACE/NAME."""
    ns, _, name = ref.rpartition("/")
    return (ns or namespace), name


def another_namespace(ref: str, namespace: str) -> Optional[str]:
    """Why a job of ``namespace`` may not use the pool ``ref`` of another namespace (None: it is its own)."""
    ns, _ = pool_name(ref, namespace)
    return None if ns == namespace else ANOTHER_NAMESPACE.format(ref=ref, ns=ns, namespace=namespace)


def shown(value: object) -> str:
    """A field's value in a message: quoted, 'unset', or an object's set fields."""
    if value is None:
        return UNSET
    if isinstance(value, BaseModel):
        fields = ((_wire(type(value), a), getattr(value, a)) for a in type(value).model_fields)
        return "{" + ", ".join(f"{wire}: {shown(v)}" for wire, v in fields if v is not None) + "}"
    return f"'{value}'"


def mismatch(job: GRPOJobSpec, pool: GRPOInferencePoolSpec) -> list[str]:
    """How a job differs from what its pool serves (empty: it may use it)."""
    out: list[str] = []
    for attribute in MATCHED_MODEL_FIELDS:
        mine, theirs = getattr(job.model, attribute), getattr(pool.model, attribute)
        if mine != theirs:
            field = _wire(LocalModel, attribute)
            out.append(MODEL_DIFFERS.format(field=field, mine=shown(mine), theirs=shown(theirs)))
    rank = job.train_kwargs.lora_config.r
    if rank > pool.max_lora_rank:
        out.append(RANK_ABOVE.format(rank=rank, max_rank=pool.max_lora_rank))
    return out


def cannot_serve(name: str, differences: list[str]) -> str:
    """Why a job may not use the pool ``name`` of its namespace, from :func:`mismatch`'s lines."""
    return CANNOT_SERVE.format(name=name, differences="; ".join(differences))


# --------------------------------------------------------------------------- CEL: the admission policies


def _cel_string(text: str) -> str:
    """A CEL string literal (JSON's escapes are CEL's)."""
    return json.dumps(text)


def cel_template(template: str, known: Optional[dict[str, str]] = None, **fields: str) -> str:
    """``template`` (a str.format template) as a CEL expression: ``fields`` are CEL string expressions, ``known``
    values known now (written into the literal text)."""
    parts: list[str] = []
    text = ""
    for literal, field, spec, conversion in string.Formatter().parse(template):
        text += literal
        if field is None:
            continue
        assert not spec and not conversion, f"{template!r}: only plain {{field}} is compiled to CEL"
        if known is not None and field in known:
            text += known[field]
            continue
        if text:
            parts.append(_cel_string(text))
            text = ""
        parts.append(f"({fields[field]})")
    if text:
        parts.append(_cel_string(text))
    return " + ".join(parts)


def _cel_value(value: str, annotation: Any) -> str:
    """:func:`shown` in CEL, of ``value`` (a CEL expression, never unset) of type ``annotation``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    (kind,) = args
    if kind is str:
        return f"\"'\" + {value} + \"'\""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        pieces = ", ".join(
            f"{value}.?{_wire(kind, a)}.hasValue() ? "
            f"{_cel_string(_wire(kind, a) + ': ')} + {_cel_value(f'{value}.{_wire(kind, a)}', info.annotation)} : ''"
            for a, info in kind.model_fields.items()
        )
        return f"'{{' + [{pieces}].filter(s, s != '').join(', ') + '}}'"
    raise TypeError(f"no CEL rendering of {annotation!r}: add one to _cel_value beside shown()")


def _cel_shown(optional: str, annotation: Any) -> str:
    """:func:`shown` in CEL, of ``optional`` (a CEL optional)."""
    return f"({optional}.hasValue() ? {_cel_value(f'{optional}.value()', annotation)} : {_cel_string(UNSET)})"


# The job's reference, split as pool_name splits it (the last '/').
_REF = "object.spec.inference.pool"
_REF_NAMESPACE = (
    f"{_REF}.lastIndexOf('/') > 0 ? {_REF}.substring(0, {_REF}.lastIndexOf('/')) : object.metadata.namespace"
)
_REF_NAME = f"{_REF}.substring({_REF}.lastIndexOf('/') + 1)"
_TRAIN_KWARGS = _wire(GRPOJobSpec, "train_kwargs")
_LORA = _wire(TrainKwargs, "lora_config")
_JOB_RANK = f"object.spec.?{_TRAIN_KWARGS}.?{_LORA}.?r.orValue({DEFAULT_JOB_RANK})"
_POOL_RANK = f"params.spec.?{_wire(GRPOInferencePoolSpec, 'max_lora_rank')}.orValue({DEFAULT_POOL_RANK})"


def _differences_cel() -> str:
    """The CEL list of :func:`mismatch`'s lines of the job (``object``) and a pool (``params``)."""
    checks: list[str] = []
    for attribute in MATCHED_MODEL_FIELDS:
        wire, annotation = _wire(LocalModel, attribute), LocalModel.model_fields[attribute].annotation
        mine, theirs = f"object.spec.model.?{wire}", f"params.spec.model.?{wire}"
        message = cel_template(
            MODEL_DIFFERS,
            {"field": wire},
            mine=_cel_shown(mine, annotation),
            theirs=_cel_shown(theirs, annotation),
        )
        checks.append(f"{mine} == {theirs} ? '' : {message}")
    rank = cel_template(RANK_ABOVE, rank=f"string({_JOB_RANK})", max_rank=f"string({_POOL_RANK})")
    checks.append(f"{_JOB_RANK} <= {_POOL_RANK} ? '' : {rank}")
    return "[" + ", ".join(f"({c})" for c in checks) + "].filter(d, d != '')"


def _judged(*variables: dict[str, str]) -> dict[str, Any]:
    """What both policies judge (a new job naming a pool), and the variables they read (the reference's parts)."""
    return {
        # CREATE only: spec.model, spec.trainKwargs and spec.inference.pool are immutable, so an update cannot make
        # a job differ from its pool; judging updates would refuse the operator's own patches (finalizers, Kopf's
        # annotations) of a job whose pool changed after it, and so block its deletion.
        "matchConstraints": {
            "resourceRules": [
                {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["CREATE"], "resources": [PLURAL]}
            ],
        },
        "matchConditions": [{"name": "names-a-pool", "expression": "object.spec.?inference.?pool.hasValue()"}],
        "variables": [
            {"name": "refNamespace", "expression": _REF_NAMESPACE},
            {"name": "poolName", "expression": _REF_NAME},
            *variables,
        ],
    }


def admission_policies() -> dict[str, dict[str, Any]]:
    """The chart's ValidatingAdmissionPolicies, by name suffix: each one's ``policy`` spec, and its binding's
    spec but for policyName and matchResources (the chart's: the release's names, the watched namespaces)."""
    own_namespace = "variables.refNamespace == object.metadata.namespace"
    namespace = {
        # no object to read, so nothing to miss: a failure is a bug, and refuses
        "failurePolicy": "Fail",
        **_judged(),
        "validations": [
            {
                "expression": own_namespace,
                "messageExpression": cel_template(
                    ANOTHER_NAMESPACE,
                    ref=_REF,
                    ns="variables.refNamespace",
                    namespace="object.metadata.namespace",
                ),
                "reason": "Invalid",
            }
        ],
    }
    model = {
        # the pools are read from the API server's cache: until it has synced (or without the pool CRD), the job
        # is left to the operator, which judges the same and creates nothing for a job it refuses
        "failurePolicy": "Ignore",
        "paramKind": {"apiVersion": API_VERSION, "kind": POOL_KIND},
        **_judged({"name": "differences", "expression": _differences_cel()}),
        "validations": [
            {
                # run once per pool of the job's namespace: only the one the job names is judged, and not while
                # it is being deleted (the operator's PoolNotFound: the job waits for a pool of that name)
                "expression": (
                    f"!({own_namespace}) || params.metadata.name != variables.poolName"
                    " || has(params.metadata.deletionTimestamp) || variables.differences.size() == 0"
                ),
                "messageExpression": cel_template(
                    CANNOT_SERVE, name="variables.poolName", differences="variables.differences.join('; ')"
                ),
                "reason": "Invalid",
            }
        ],
    }
    return {
        "pool-namespace": {"policy": namespace, "binding": {"validationActions": ["Deny"]}},
        "pool-model": {
            "policy": model,
            "binding": {
                "validationActions": ["Deny"],
                # every pool of the job's own namespace (paramRef.namespace unset: the object's); none there yet:
                # admitted, and the operator waits for the pool (PoolNotFound)
                "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            },
        },
    }


HEADER = (
    "# Generated by `grpo-operator-crd --admission-policies` from operator/grpo_operator/api/pool_admission.py "
    "(what pool_verdict checks). Do not edit.\n"
)


def render_admission_policies() -> str:
    return HEADER + yaml.safe_dump(admission_policies(), sort_keys=False, width=120)
