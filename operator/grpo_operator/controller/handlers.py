"""Kopf handlers: when to reconcile. What to do is in lifecycle.py, how in reconcile.py.

Every handler is async and only puts the job's key on a :class:`WorkQueue`
(deduplicated: one reconcile for any number of events that arrive while the job
waits, and never two at once for one job); ``reconcile_workers`` tasks drain it,
each running one blocking reconcile in a thread of the operator's own pool. No
handler holds one of Kopf's handler threads (``settings.execution``), so a burst
of pod events no longer waits behind a few whole reconciles.

* create / resume (operator restart) / spec update of a GRPOJob → reconcile it;
* a background task (:class:`Resync`) → reconcile every job periodically (progress,
  deadline, TTL, missed events, failed reconciles), the jobs known from a Kopf
  index, in the queue's background lane: events go first;
* any change of a pod the operator manages → reconcile its job at once
  (so a failed trainer or an unschedulable pod is reported within seconds);
* deletion (the watch's DELETED event) → forget the job's metrics;
* a trainer's /progress read with news (progress_pool.py, its own threads) → reconcile its job.

``/healthz`` (liveness.py) turns red when the work queue or the progress pool is
wedged, so the kubelet restarts an operator whose workers are stuck.

The pods' watch also fills a Kopf index (pod views per job), which reconciles
read instead of listing pods: with hundreds of jobs, one LIST per reconcile was
most of the API server's work.

No handler needs a finalizer, so Kopf puts none on a job, and removes the one an
older version (which used a ``@kopf.timer``) left: with the operator stopped,
``kubectl delete grpojob`` still completes, and the children go by garbage
collection (ownerReferences). Kopf timers and daemons, and deletion handlers that
are not ``optional=True``, would each bring the finalizer back.

Handlers are registered on an explicit registry by :func:`register`, so nothing
happens at import time and the settings decide the resync interval and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf
from aiohttp import web

from grpo_operator.api.job import GROUP, PLURAL, VERSION
from grpo_operator.api.pool import PLURAL as POOL_PLURAL
from grpo_operator.children import JOB_LABEL, MANAGED_BY_LABEL, OPERATOR_NAME, POOL_LABEL
from grpo_operator.controller.liveness import Check, serve_health
from grpo_operator.controller.pool_reconcile import PoolReconciler
from grpo_operator.controller.pooling import pool_name
from grpo_operator.controller.reconcile import Reconciler, indexed_pod
from grpo_operator.controller.workqueue import WorkQueue
from grpo_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "grpo.dev"
JOB_INDEX = "grpojobs"  # the Kopf index of live jobs: (namespace, name) → uid
POD_INDEX = "grpopods"  # the Kopf index of the operator's pods: (namespace, job) → (owner uids, view)
POD_LABELS = {MANAGED_BY_LABEL: OPERATOR_NAME, JOB_LABEL: kopf.PRESENT}  # the pods the operator made
POOL_INDEX = "grpoinferencepools"  # the Kopf index of live pools: (namespace, name) → uid
POOL_POD_LABELS = {MANAGED_BY_LABEL: OPERATOR_NAME, POOL_LABEL: kopf.PRESENT}  # pools' servers


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf's own bookkeeping in annotations (the CRD prunes unknown status fields), no peering."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # One replica with strategy Recreate; no peering CRDs to install or grant.
    settings.peering.standalone = True
    # No cluster-wide listing of CRDs or namespaces: the RBAC does not grant it.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # our own Events describe transitions
    settings.watching.server_timeout = 300
    # The same for Kopf's own calls and watches: a watch that hears nothing for a minute past the
    # server's own timeout is dead, not quiet (then Kopf reconnects).
    settings.watching.connect_timeout = 10
    settings.watching.client_timeout = settings.watching.server_timeout + 60
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60


JobKey = tuple[str, str]  # (namespace, name)


@dataclass
class Resync:
    """Queue every known job for a reconcile at least every ``interval`` seconds, from one background task.

    This is what a ``@kopf.timer`` would do, without the finalizer Kopf puts on
    every object a timer serves (which makes deletions hang while no operator runs).
    It ticks every half interval and skips the jobs reconciled within the last
    half: while pods come and go, event-driven reconciles already did the work.
    A job whose reconcile failed is retried here.
    """

    reconciler: Reconciler
    queue: WorkQueue[JobKey]
    interval: float
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self, jobs: kopf.Index[JobKey, str]) -> None:
        self._task = asyncio.create_task(self._run(jobs), name="grpojob resync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, jobs: kopf.Index[JobKey, str]) -> None:
        half = self.interval / 2
        while True:
            await asyncio.sleep(half)
            self.once(list(jobs), half)  # a snapshot: Kopf changes the index between our awaits

    def once(self, keys: list[JobKey], skip_within: float = 0.0) -> int:
        """Queue these jobs (background lane) unless reconciled within ``skip_within`` s; how many were queued."""
        due = [key for key in keys if not self.reconciler.reconciled_within(key, skip_within)]
        for key in due:
            self.queue.add(key, background=True)
        return len(due)


def reconcile_queue(reconciler: Reconciler, workers: int) -> tuple[WorkQueue[JobKey], ThreadPoolExecutor]:
    """The queue of jobs to reconcile, and the threads its workers run the (blocking) reconciles in.

    One thread per worker, not asyncio's default executor (min(32, CPUs + 4)
    threads, 6 on a 2-core node), which would cap the workers.
    """
    threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpo-reconcile")

    async def reconcile(key: JobKey) -> None:
        await asyncio.get_running_loop().run_in_executor(threads, reconciler.reconcile_named, *key)

    return WorkQueue(reconcile, workers, name="grpojobs"), threads


def health_check(queue: WorkQueue[JobKey], reconciler: Reconciler, limit: float) -> Check:
    """What /healthz reports: the wedged pools (none: healthy), and what each holds."""

    def check() -> tuple[list[str], dict[str, Any]]:
        problems = [p for p in (queue.stalled(limit), reconciler.progress.stalled(limit)) if p]
        counts = {"waiting": len(queue), "reconciling": queue.processing, "polling": reconciler.progress.in_flight()}
        return problems, counts

    return check


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    settings: OperatorSettings,
    pools: Optional[PoolReconciler] = None,
) -> None:
    """Register every handler of the operator on ``registry`` (``pools``: GRPOInferencePools' too)."""

    kopf.on.login(registry=registry)(kopf.login_via_client)
    queue, threads = reconcile_queue(reconciler, settings.reconcile_workers)
    resync = Resync(reconciler, queue, min(settings.resync_seconds, settings.progress_poll_seconds))
    health: list[web.AppRunner] = []
    pool_queue = register_pools(registry, pools, settings, queue) if pools is not None else None

    @kopf.index(GROUP, VERSION, PLURAL, id=JOB_INDEX, registry=registry)
    async def index_job(namespace: str, name: str, uid: str, **_: Any) -> dict[JobKey, str]:
        return {(namespace, name): uid}

    @kopf.index("v1", "pods", labels=POD_LABELS, id=POD_INDEX, registry=registry)
    async def index_pod(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[JobKey, Any]:
        return {(namespace, labels[JOB_LABEL]): indexed_pod(body)}

    @kopf.on.startup(registry=registry)
    async def start_workers(**kwargs: Any) -> None:
        loop = asyncio.get_running_loop()

        def news(key: JobKey) -> None:  # from a progress thread: the queue lives in the loop
            with contextlib.suppress(RuntimeError):  # the loop has closed: the operator is stopping
                loop.call_soon_threadsafe(queue.add, key)

        reconciler.progress.on_news = news
        queue.start()
        resync.start(kwargs[JOB_INDEX])  # the live index: filled by Kopf as the watch streams
        if settings.health_port:
            check = health_check(queue, reconciler, settings.liveness_stall_seconds)
            health.append(await serve_health(settings.health_port, check))
        workers = settings.reconcile_workers
        log.info("reconciling with %d workers", workers, extra={"workers": workers})

    @kopf.on.cleanup(registry=registry)
    async def stop_workers(**_: Any) -> None:
        for runner in health:
            await runner.cleanup()
        await resync.stop()
        await queue.stop()
        threads.shutdown(wait=False, cancel_futures=True)  # a reconcile in flight ends on its own
        reconciler.progress.shutdown()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    async def on_job(namespace: str, name: str, **kwargs: Any) -> None:
        reconciler.use_pod_index(kwargs[POD_INDEX])  # Kopf calls handlers only once its indexes are filled
        queue.add((namespace, name))

    @kopf.on.event("v1", "pods", labels=POD_LABELS, registry=registry)
    async def on_pod(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
        reconciler.use_pod_index(kwargs[POD_INDEX])
        queue.add((namespace, labels[JOB_LABEL]))

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_job_event(type: str, name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
        # every event of every job comes here; only a deletion needs a thread
        if type == "DELETED":
            await asyncio.to_thread(reconciler.forget, namespace, name)
        ref = ((body.get("spec") or {}).get("inference") or {}).get("pool")
        if pool_queue is not None and isinstance(ref, str):  # its pool counts its slots afresh
            pool_ns, pool = pool_name(ref, namespace)
            if pool_ns == namespace:
                pool_queue.add((namespace, pool))


def register_pools(
    registry: kopf.OperatorRegistry, pools: PoolReconciler, settings: OperatorSettings, jobs: WorkQueue[JobKey]
) -> WorkQueue[JobKey]:
    """GRPOInferencePools: reconciled when they appear or their spec changes, on their servers' pod events, the
    events of the jobs that name them, and periodically; a pool's change reconciles the jobs it lists
    (attached or waiting)."""
    threads = ThreadPoolExecutor(max_workers=settings.pool_workers, thread_name_prefix="grpo-pool")

    async def reconcile(key: JobKey) -> None:
        await asyncio.get_running_loop().run_in_executor(threads, pools.reconcile_named, *key)

    queue: WorkQueue[JobKey] = WorkQueue(reconcile, settings.pool_workers, name="grpoinferencepools")
    resync = Resync(pools, queue, settings.resync_seconds)  # type: ignore[arg-type]  # the same two methods

    @kopf.index(GROUP, VERSION, POOL_PLURAL, id=POOL_INDEX, registry=registry)
    async def index_pool(namespace: str, name: str, uid: str, **_: Any) -> dict[JobKey, str]:
        return {(namespace, name): uid}

    @kopf.on.startup(registry=registry)
    async def start_pools(**kwargs: Any) -> None:
        queue.start()
        resync.start(kwargs[POOL_INDEX])

    @kopf.on.cleanup(registry=registry)
    async def stop_pools(**_: Any) -> None:
        await resync.stop()
        await queue.stop()
        threads.shutdown(wait=False, cancel_futures=True)

    @kopf.on.event("v1", "pods", labels=POOL_POD_LABELS, registry=registry)
    async def on_pool_pod(namespace: str, labels: kopf.Labels, **_: Any) -> None:
        queue.add((namespace, labels[POOL_LABEL]))

    @kopf.on.event(GROUP, VERSION, POOL_PLURAL, registry=registry)
    async def on_pool_event(type: str, name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
        # Events only (no create/update handlers): Kopf would keep its bookkeeping in annotations, and the
        # operator may not patch pools. A change of the status alone is the pool's own write: not queued again.
        status = body.get("status") or {}
        generation = (body.get("metadata") or {}).get("generation")
        if type != "DELETED" and (type in (None, "ADDED") or generation != status.get("observedGeneration")):
            queue.add((namespace, name))
        for job in [j.get("name") for j in status.get("jobs") or []] + list(status.get("waiting") or []):
            if isinstance(job, str):
                jobs.add((namespace, job))  # attached, waiting, or told that the pool is gone
        if type == "DELETED":
            await asyncio.to_thread(pools.forget, namespace, name)

    return queue
