"""One reconcile of one GRPOInferencePool: observe it, its children and the jobs that name it,
:func:`pool_lifecycle.decide_pool`, carry out the plan (as reconcile.py does for a job)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

from kubernetes.client.exceptions import ApiException

from grpo_operator import children
from grpo_operator.api.job import InvalidJob, parse_spec
from grpo_operator.api.pool import PLURAL as POOL_PLURAL
from grpo_operator.api.pool import GRPOInferencePoolSpec, InvalidPool, parse_pool_spec
from grpo_operator.controller.conditions import is_true, now_utc, pod_view
from grpo_operator.controller.kube import Cluster, Conflict, api_message
from grpo_operator.controller.lifecycle import Event, Plan
from grpo_operator.controller.memo import FoundMemo
from grpo_operator.controller.pool_lifecycle import JobOnPool, PoolObserved, decide_pool
from grpo_operator.controller.pooling import job_slots, mismatch, names_pool, serves_result
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.controller.reconcile import CONFLICT_ATTEMPTS, FOUND_MEMO_SECONDS
from grpo_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

PoolKey = tuple[str, str]  # (namespace, name)


class PoolReconciler:
    """Reconciles pools, each under its own lock (the work queue already runs one at a time per pool)."""

    def __init__(self, cluster: Cluster, settings: OperatorSettings, metrics: OperatorMetrics) -> None:
        self.cluster = cluster
        self.settings = settings
        self.metrics = metrics
        self._locks: dict[PoolKey, threading.Lock] = {}
        self._started: dict[PoolKey, float] = {}
        self._guard = threading.Lock()
        # (kind, namespace, name, pool uid): the pool's children once seen (its key: once created, never read)
        self._found: FoundMemo[tuple[str, str, str, str], bool] = FoundMemo(FOUND_MEMO_SECONDS)

    def _lock(self, key: PoolKey) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def reconciled_within(self, key: PoolKey, seconds: float) -> bool:
        with self._guard:
            started = self._started.get(key)
        return started is not None and time.monotonic() - started < seconds

    def forget(self, namespace: str, name: str) -> None:
        """The pool is gone: drop its series and memory (its children go by garbage collection, its volume stays)."""
        with self._lock((namespace, name)):
            self.metrics.forget_pool(namespace, name)
            with self._guard:
                self._started.pop((namespace, name), None)

    def reconcile_named(self, namespace: str, name: str) -> Optional[Plan]:
        """Reconcile a pool; None when it is gone or being deleted. A status write over a changed pool (409)
        reads it again and decides afresh."""
        key = (namespace, name)
        with self._lock(key):
            with self._guard:
                self._started[key] = time.monotonic()
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                fresh = self.cluster.get_pool(namespace, name)
                if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                    return None
                try:
                    return self._reconcile(fresh)
                except Conflict:
                    if attempt == CONFLICT_ATTEMPTS:
                        raise
        return None

    # ------------------------------------------------------------------ observe

    def _child(self, kind: str, pool: children.Pool, name: str, *, owned: bool = True) -> Optional[dict[str, Any]]:
        """The pool's child ``name`` (None: there is none, or it is being deleted, or, ``owned``, not the pool's)."""
        obj = self.cluster.read(kind, pool.namespace, name)
        meta = (obj or {}).get("metadata") or {}
        owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
        if obj is None or meta.get("deletionTimestamp") or (owned and pool.uid not in owners):
            return None
        return obj

    def _exists(self, kind: str, pool: children.Pool, name: str, *, owned: bool = True) -> bool:
        def read() -> Optional[bool]:
            return True if self._child(kind, pool, name, owned=owned) is not None else None

        return self._found.get((kind, pool.namespace, name, pool.uid), read) is not None

    def _jobs(self, namespace: str, name: str, spec: Optional[GRPOInferencePoolSpec]) -> tuple[JobOnPool, ...]:
        """The jobs of the namespace that name the pool, with the slots they would hold."""
        out: list[JobOnPool] = []
        for doc in self.cluster.list_jobs(namespace):
            meta = doc.get("metadata") or {}
            try:
                job_spec = parse_spec(dict(doc.get("spec") or {}))
            except InvalidJob:
                continue  # refused on its own: it names nothing
            if not names_pool(job_spec, namespace, name) or meta.get("deletionTimestamp"):
                continue
            status = doc.get("status") or {}
            out.append(
                JobOnPool(
                    name=str(meta.get("name")),
                    created=str(meta.get("creationTimestamp") or ""),
                    slots=job_slots(job_spec),
                    finished=is_true(status, "Succeeded") or is_true(status, "Failed"),
                    refused=spec is None or bool(mismatch(job_spec, spec)),
                    adapters=len(status.get("loadedAdapters") or []),
                    serving=serves_result(job_spec, status),
                )
            )
        return tuple(out)

    def observe(self, body: Mapping[str, Any]) -> PoolObserved:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            spec: Optional[GRPOInferencePoolSpec] = parse_pool_spec(dict(body.get("spec") or {}))
            error = None
        except InvalidPool as exc:
            spec, error = None, "; ".join(exc.problems)
        found: set[tuple[str, str]] = set()
        key_exists = False
        config_data: Optional[dict[str, str]] = None
        jobs = self._jobs(ns, name, spec)
        if spec is not None:
            pool = children.Pool(name, ns, uid, spec)
            served = [j.name for j in jobs if j.serving]  # its serve policy is looked for once it may be wanted
            for manifest in children.pool_children(pool, self.settings, "unread", served):
                kind, child = manifest["kind"], manifest["metadata"]["name"]
                if kind == "Secret":  # never read: known once created (or met) by this operator
                    key_exists = self._found.get(("Secret", ns, child, uid), lambda: None) is not None
                elif kind == "ConfigMap":  # read each time: it lists the results the servers answer for
                    config = self._child(kind, pool, child)
                    if config is not None:
                        config_data = dict(config.get("data") or {})
                        found.add((kind, child))
                elif self._exists(kind, pool, child, owned=kind != "PersistentVolumeClaim"):
                    found.add((kind, child))
        return PoolObserved(
            name=name,
            namespace=ns,
            uid=uid,
            generation=meta.get("generation"),
            spec=spec,
            spec_error=error,
            status=dict(body.get("status") or {}),
            found=frozenset(found),
            config_map_data=config_data,
            key_secret_exists=key_exists,
            pods=tuple(pod_view(p) for p in self.cluster.pool_pods(ns, name, uid)),
            jobs=jobs,
            now=now_utc(),
        )

    # ------------------------------------------------------------------ act

    def _reconcile(self, body: Mapping[str, Any]) -> Plan:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        obs = self.observe(body)
        plan = decide_pool(obs, self.settings)
        if plan.status != dict(body.get("status") or {}):
            self.cluster.patch_status(ns, name, plan.status, meta.get("resourceVersion"), plural=POOL_PLURAL)
        for pod in plan.delete_pods:
            self.cluster.delete_pod(ns, pod)
        for manifest in plan.replace:
            self.cluster.replace_config_map(manifest)
        created: list[str] = []
        for manifest in plan.create:
            what = f"{manifest['kind']} {manifest['metadata']['name']}"
            try:
                if self.cluster.create(manifest):
                    created.append(what)
                if manifest["kind"] == "Secret":
                    self._found.remember(("Secret", ns, manifest["metadata"]["name"], uid), True)
            except ApiException as exc:
                message = f"could not create {what}: {api_message(exc)}"
                log.warning("%s/%s: %s", ns, name, message)
                plan.events.append(Event("Warning", "CreateFailed", message))
        for t in plan.transitions:
            plan.events.append(Event("Warning" if t.warning else "Normal", t.reason, t.event_message()))
        if created:
            plan.events.append(Event("Normal", "Created", "created " + ", ".join(created)))
        for event in plan.events:
            self.cluster.post_event(body, event)
        self.metrics.update_pool(ns, name, plan.status)
        return plan
