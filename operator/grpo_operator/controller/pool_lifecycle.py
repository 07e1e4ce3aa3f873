"""What to do about a GRPOInferencePool: a pure function.

:func:`decide_pool` takes a snapshot of the pool, its children and the jobs of its
namespace that name it, and returns a :class:`~grpo_operator.controller.lifecycle.Plan`
(status, objects to create, pods to delete, Events). The pool is the one writer of who
holds its slots (``status.jobs``, oldest first; a job attached is never detached while
it runs): a job's own reconcile only reads that, so two jobs arriving together cannot
both take the last slots. A job that has succeeded with spec.serve.enabled keeps one slot,
its result's, which the pool serves under the job's name until serve is turned off or the
job is deleted.

The job's side (whether it may use the pool it names) is controller/pooling.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from grpo_operator import children
from grpo_operator.api.pool import POOL_CONDITION_ORDER, SLOTS_PER_RESULT, GRPOInferencePoolSpec
from grpo_operator.children import Pool
from grpo_operator.controller.conditions import Cond, PodView, conditions, transitions
from grpo_operator.controller.lifecycle import Event, Plan, waiting_cond
from grpo_operator.settings import OperatorSettings


@dataclass(frozen=True)
class JobOnPool:
    """A job of the pool's namespace that names the pool."""

    name: str
    created: str  # metadata.creationTimestamp: who came first
    slots: int  # what it holds while it trains
    finished: bool  # and serves nothing: it holds no slot
    refused: bool  # its model or rank does not match: it is refused, and holds nothing
    adapters: int = 0  # its versions the server lists, as its trainer last reported (status.loadedAdapters)
    serving: bool = False  # succeeded with spec.serve.enabled and a result adapter: the pool serves it

    @property
    def held(self) -> int:
        """The slots it takes: its versions in flight while it trains, its result's once it serves."""
        return SLOTS_PER_RESULT if self.serving else self.slots


@dataclass(frozen=True)
class PoolObserved:
    """A snapshot of one pool, its children, and the jobs that name it."""

    name: str
    namespace: str
    uid: str
    generation: Optional[int]
    spec: Optional[GRPOInferencePoolSpec]
    spec_error: Optional[str]
    status: Mapping[str, Any]
    found: frozenset[tuple[str, str]]  # (kind, name) of the pool's children that exist
    config_map_data: Optional[Mapping[str, str]]  # its ConfigMap's (None: not found)
    key_secret_exists: bool
    pods: tuple[PodView, ...]
    jobs: tuple[JobOnPool, ...]
    now: datetime
    new_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def pool(self) -> Pool:
        assert self.spec is not None
        return Pool(self.name, self.namespace, self.uid, self.spec)


def attach(previous: list[str], jobs: tuple[JobOnPool, ...], slots: int) -> tuple[list[JobOnPool], list[str]]:
    """(attached, waiting): the jobs attached before keep their slots (a job that finishes serving its result
    keeps one of them); the others, oldest first, take the free ones while they last. Finished jobs that serve
    nothing, and refused ones, hold none."""
    live = [j for j in jobs if (j.serving or not j.finished) and not j.refused]
    kept = sorted((j for j in live if j.name in previous), key=lambda j: previous.index(j.name))
    used = sum(j.held for j in kept)
    attached, waiting = list(kept), []
    for job in sorted((j for j in live if j.name not in previous), key=lambda j: (j.created, j.name)):
        if used + job.held <= slots:
            attached.append(job)
            used += job.held
        else:
            waiting.append(job.name)
    return attached, waiting


def _attached(job: JobOnPool) -> dict[str, Any]:
    """The job's entry in status.jobs."""
    if job.serving:
        return {"name": job.name, "slots": job.held, "serving": True}
    return {"name": job.name, "slots": job.held, "adapters": job.adapters}


def decide_pool(obs: PoolObserved, settings: OperatorSettings) -> Plan:
    """The plan for one pool. Never raises on odd observations; always returns a full status."""
    old_conditions = list(obs.status.get("conditions") or [])
    status: dict[str, Any] = {k: v for k, v in obs.status.items() if k != "conditions"}
    status["observedGeneration"] = obs.generation
    plan = Plan(status=status)
    new: dict[str, Cond] = {}

    def done() -> Plan:
        status["conditions"] = conditions(old_conditions, new, obs.now, obs.generation, order=POOL_CONDITION_ORDER)
        plan.transitions = transitions(old_conditions, status["conditions"])
        return plan

    if obs.spec is None:
        new["Created"] = Cond.false("InvalidSpec", obs.spec_error or "the spec is invalid")
        new["Ready"] = Cond.false("InvalidSpec", "the spec is invalid")
        return done()
    pool, spec = obs.pool, obs.spec

    # ---------------------------------------------------------------- slots
    previous = [j.get("name", "") for j in obs.status.get("jobs") or []]
    attached, waiting = attach(previous, obs.jobs, spec.slots)
    used = sum(j.held for j in attached)
    served = [j.name for j in attached if j.serving]
    status.update(
        slots=spec.slots,
        slotsUsed=used,
        adaptersLoaded=sum(j.adapters for j in attached if not j.serving),
        resultsServed=len(served),
        jobs=[_attached(j) for j in attached],
    )
    status["waiting"] = waiting

    # ---------------------------------------------------------------- children before the pods
    key = None if obs.key_secret_exists else obs.new_api_key
    wanted = children.pool_children(pool, settings, key, served)
    plan.create.extend(m for m in wanted if m["kind"] == "Secret" or (m["kind"], m["metadata"]["name"]) not in obs.found)
    (config,) = [m for m in wanted if m["kind"] == "ConfigMap"]
    if obs.config_map_data is not None and dict(obs.config_map_data) != config["data"]:
        plan.replace.append(config)  # the results it serves changed (or the guard, with the operator)
    new["Created"] = Cond.true("ChildrenCreated", "volume, ConfigMap, key, Service and servers are created")

    # ---------------------------------------------------------------- servers
    names = [children.pool_pod_name(pool, i) for i in range(spec.replicas)]
    ready = 0
    trouble: Optional[Cond] = None
    for pod in obs.pods:
        if pod.deleting:
            continue
        if pod.name not in names:
            plan.delete_pods.append(pod.name)  # replicas lowered
        elif pod.finished:
            # evicted, or its node lost: deleted now, created again by the next reconcile (the jobs wait for it)
            plan.delete_pods.append(pod.name)
            plan.events.append(Event("Warning", "ServerFailed", f"{pod.describe_exit()}; recreating it"))
    present = {p.name: p for p in obs.pods if p.name not in plan.delete_pods}
    for i, name in enumerate(names):
        pod = present.get(name)
        if pod is None and not any(p.name == name for p in obs.pods):
            plan.create.append(children.pool_pod(pool, settings, i))
        if pod is not None and pod.ready and not pod.deleting:
            ready += 1
        elif trouble is None:
            trouble = waiting_cond(pod, "vLLM server", pod is None, [])
    status["replicas"] = spec.replicas
    status["readyReplicas"] = ready
    status["endpoint"] = children.pool_endpoint(pool, settings)

    holders = ", ".join(j.name for j in attached) or "no job"
    if waiting:
        new["SlotsAvailable"] = Cond.false(
            "PoolFull",
            f"{', '.join(waiting)} wait for adapter slots: {used} of {spec.slots} are held by {holders}; raise "
            "maxCpuLoras (each job takes the slots of its versions in flight) or wait for a job to finish",
        )
    else:
        new["SlotsAvailable"] = Cond.true("SlotsFree", f"{used} of {spec.slots} slots held by {holders}")

    if spec.replicas == 0:
        new["Ready"] = Cond.false("ScaledToZero", "replicas is 0: no server runs; attached jobs wait")
    elif ready > 0:
        results = f" (the results of {', '.join(served)})" if served else ""
        new["Ready"] = Cond.true("Ready", f"{ready} of {spec.replicas} servers ready, serving {holders}{results}")
    else:
        assert trouble is not None
        new["Ready"] = trouble
    return done()
