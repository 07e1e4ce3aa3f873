"""Kopf handlers: when to reconcile. What to do is in lifecycle.py, how in reconcile.py.

* create / resume (operator restart) / spec update of a GRPOJob → reconcile it;
* a background task (:class:`Resync`) → reconcile every job periodically (progress,
  deadline, TTL, missed events), the jobs known from a Kopf index;
* any change of a pod the operator manages → reconcile its job at once
  (so a failed trainer or an unschedulable pod is reported within seconds);
* deletion (the watch's DELETED event) → forget the job's metrics.

The pods' watch also fills a Kopf index (pod views per job), which reconciles
read instead of listing pods: with hundreds of jobs, one LIST per reconcile was
most of the API server's work.

No handler needs a finalizer, so Kopf puts none on a job, and removes the one an
older version (which used a ``@kopf.timer``) left: with the operator stopped,
``kubectl delete grpojob`` still completes, and the children go by garbage
collection (ownerReferences). Kopf timers and daemons, and deletion handlers that
are not ``optional=True``, would each bring the finalizer back.

Handlers are registered on an explicit registry by :func:`register`, so nothing
happens at import time and the settings decide the resync interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from grpo_operator.api.job import GROUP, PLURAL, VERSION
from grpo_operator.settings import OperatorSettings

from .children import JOB_LABEL, MANAGED_BY_LABEL, OPERATOR_NAME
from .reconcile import Reconciler, indexed_pod

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "grpo.dev"
JOB_INDEX = "grpojobs"  # the Kopf index of live jobs: (namespace, name) → uid
POD_INDEX = "grpopods"  # the Kopf index of the operator's pods: (namespace, job) → (owner uids, view)
POD_LABELS = {MANAGED_BY_LABEL: OPERATOR_NAME, JOB_LABEL: kopf.PRESENT}  # the pods the operator made


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


@dataclass
class Resync:
    """Reconcile every known job at least every ``interval`` seconds, from one background task.

    This is what a ``@kopf.timer`` would do, without the finalizer Kopf puts on
    every object a timer serves (which makes deletions hang while no operator runs).
    It ticks every half interval and skips the jobs an event reconciled within the
    last half: while pods come and go those reconciles already did the work, and
    re-reading hundreds of jobs on top of them slowed everything down.
    """

    reconciler: Reconciler
    interval: float
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self, jobs: kopf.Index[tuple[str, str], str]) -> None:
        self._task = asyncio.create_task(self._run(jobs), name="grpojob resync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, jobs: kopf.Index[tuple[str, str], str]) -> None:
        half = self.interval / 2
        while True:
            await asyncio.sleep(half)
            # a snapshot: the index changes while we await
            await self.once([key for key in jobs if not self.reconciler.reconciled_within(key, half)])

    async def once(self, keys: list[tuple[str, str]]) -> None:
        """Reconcile these jobs concurrently (blocking API calls, hence threads); log failures, retry next time."""
        results = await asyncio.gather(
            *(asyncio.to_thread(self.reconciler.reconcile_named, ns, name) for ns, name in keys),
            return_exceptions=True,
        )
        for (ns, name), result in zip(keys, results):
            if isinstance(result, Exception):
                log.error("resync of %s/%s failed; retried in %.0fs", ns, name, self.interval, exc_info=result)


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings) -> None:
    """Register every handler of the operator on ``registry``."""

    kopf.on.login(registry=registry)(kopf.login_via_client)
    resync = Resync(reconciler, min(settings.resync_seconds, settings.progress_poll_seconds))

    @kopf.index(GROUP, VERSION, PLURAL, id=JOB_INDEX, registry=registry)
    async def index_job(namespace: str, name: str, uid: str, **_: Any) -> dict[tuple[str, str], str]:
        return {(namespace, name): uid}

    @kopf.index("v1", "pods", labels=POD_LABELS, id=POD_INDEX, registry=registry)
    async def index_pod(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
        return {(namespace, labels[JOB_LABEL]): indexed_pod(body)}

    @kopf.on.startup(registry=registry)
    async def start_resync(**kwargs: Any) -> None:
        resync.start(kwargs[JOB_INDEX])  # the live index: filled by Kopf as the watch streams

    @kopf.on.cleanup(registry=registry)
    async def stop_resync(**_: Any) -> None:
        await resync.stop()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def on_job(body: kopf.Body, **kwargs: Any) -> None:
        reconciler.use_pod_index(kwargs[POD_INDEX])  # Kopf calls handlers only once its indexes are filled
        reconciler.reconcile(body)

    @kopf.on.event("v1", "pods", labels=POD_LABELS, registry=registry)
    def on_pod(body: kopf.Body, namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
        reconciler.use_pod_index(kwargs[POD_INDEX])
        reconciler.reconcile_named(namespace, labels[JOB_LABEL])

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_job_event(type: str, name: str, namespace: str, **_: Any) -> None:
        # async: every event of every job comes here; only a deletion needs a thread
        if type == "DELETED":
            await asyncio.to_thread(reconciler.forget, namespace, name)
