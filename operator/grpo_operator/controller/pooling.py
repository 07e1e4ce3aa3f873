"""Whether a job may use the inference pool it names: a pure function of the job and the pool found.

:func:`pool_verdict` says whether the pool exists in the job's namespace, serves the job's
base model at its LoRA rank, and holds slots for it (the pool decides who holds its
slots: controller/pool_lifecycle.py); the job's lifecycle acts on it, and creates
nothing for a refused job. The chart's admission policies refuse at create what they can
judge of the same (api/pool_admission.py holds the checks and messages both use); this is
where the rest is refused: a job created before its pool, a pool changed or re-created after
its jobs, and every job where the policies are not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from grpo_operator import children
from grpo_operator.api.pool import InvalidPool, parse_pool_spec
from grpo_operator.api.pool_admission import another_namespace, cannot_serve, mismatch, pool_name
from grpo_operator.api.spec import GRPOJobSpec
from grpo_operator.children import PoolBinding
from grpo_operator.controller.conditions import is_true
from grpo_operator.resolve import max_loras


def names_pool(spec: GRPOJobSpec, namespace: str, pool: str) -> bool:
    """Whether a job of ``namespace`` asks for the pool ``pool`` of its own namespace."""
    ref = spec.inference.pool
    return ref is not None and pool_name(ref, namespace) == (namespace, pool)


def serves_result(spec: GRPOJobSpec, status: Mapping[str, Any]) -> bool:
    """Whether the pool serves a job's result: it has succeeded with spec.serve.enabled and has a result
    adapter (a job whose base model scored best is served by the pool's base model, with no slot)."""
    return is_true(status, "Succeeded") and spec.serve.enabled and bool((status.get("result") or {}).get("adapter"))


def job_slots(spec: GRPOJobSpec) -> int:
    """Adapter slots a job holds in its pool: the versions it keeps loaded."""
    return max_loras(spec)


@dataclass(frozen=True)
class PoolVerdict:
    """What a job on a pool may do: refused (``reason``/``message``: nothing is created), or bound to the pool
    (``binding``), holding slots (``attached``) or waiting for them, its servers ready or not."""

    name: str
    binding: Optional[PoolBinding] = None
    reason: str = ""
    message: str = ""
    attached: bool = False
    full: bool = False  # the pool lists the job as waiting for slots
    ready: bool = False
    waiting_message: str = ""


def pool_verdict(
    job: str, namespace: str, spec: GRPOJobSpec, pool: Optional[Mapping[str, Any]]
) -> Optional[PoolVerdict]:
    """The job's verdict on the pool it names (None: it names none); ``pool``: the pool object found in the
    job's namespace under that name (None: there is none)."""
    ref = spec.inference.pool
    if ref is None:
        return None
    elsewhere = another_namespace(ref, namespace)
    if elsewhere:
        return PoolVerdict(name=ref, reason="PoolInAnotherNamespace", message=elsewhere)
    _, name = pool_name(ref, namespace)
    meta = (pool or {}).get("metadata") or {}
    if pool is None or meta.get("deletionTimestamp"):
        gone = "is being deleted" if pool is not None else "does not exist"
        return PoolVerdict(
            name=name,
            reason="PoolNotFound",
            message=(
                f"GRPOInferencePool {name!r} {gone} in namespace {namespace!r}; create it (its model must be "
                "spec.model), or remove spec.inference.pool for a vLLM pod of the job's own"
            ),
        )
    try:
        pool_spec = parse_pool_spec(dict(pool.get("spec") or {}))
    except InvalidPool as exc:
        return PoolVerdict(
            name=name, reason="PoolInvalid", message=f"GRPOInferencePool {name!r} is invalid: {'; '.join(exc.problems)}"
        )
    differences = mismatch(spec, pool_spec)
    if differences:
        return PoolVerdict(name=name, reason="PoolMismatch", message=cannot_serve(name, differences))
    status = pool.get("status") or {}
    attached = any(j.get("name") == job for j in status.get("jobs") or [])
    waiting = job in (status.get("waiting") or [])
    held = ", ".join(j.get("name", "?") for j in status.get("jobs") or []) or "none"
    message = ""
    if waiting:
        message = (
            f"GRPOInferencePool {name!r} has no free adapter slots: {status.get('slotsUsed')} of {status.get('slots')} "
            f"are held by {held}; the trainer starts when a job finishes (or raise the pool's maxCpuLoras)"
        )
    elif not attached:
        message = f"waiting for GRPOInferencePool {name!r} to attach the job"
    return PoolVerdict(
        name=name,
        binding=children.binding(name, str(meta.get("uid") or ""), pool_spec),
        attached=attached,
        full=waiting,
        ready=int(status.get("readyReplicas") or 0) > 0,
        waiting_message=message,
    )


