"""Kopf handlers: when to reconcile. What to do is in lifecycle.py, how in reconcile.py.

* create / resume (operator restart) / spec update of a GRPOJob → reconcile it;
* a timer → reconcile every job periodically (progress, deadline, TTL, missed events);
* any change of a pod the operator manages → reconcile its job at once
  (so a failed trainer or an unschedulable pod is reported within seconds);
* deletion (the watch's DELETED event) → forget the job's metrics; the children
  go by garbage collection, so no finalizer is needed and a dead operator never
  blocks a deletion.

Handlers are registered on an explicit registry by :func:`register`, so nothing
happens at import time and the settings decide the timer interval.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from grpo_operator.api.job import GROUP, PLURAL, VERSION
from grpo_operator.settings import OperatorSettings

from .children import JOB_LABEL, MANAGED_BY_LABEL, OPERATOR_NAME
from .reconcile import Reconciler

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "grpo.dev"


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


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings) -> None:
    """Register every handler of the operator on ``registry``."""

    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def on_job(body: kopf.Body, **_: Any) -> None:
        reconciler.reconcile(body)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=min(settings.resync_seconds, settings.progress_poll_seconds),
                registry=registry)  # fmt: skip
    def resync(body: kopf.Body, **_: Any) -> None:
        reconciler.reconcile(body)

    @kopf.on.event("v1", "pods", labels={MANAGED_BY_LABEL: OPERATOR_NAME, JOB_LABEL: kopf.PRESENT}, registry=registry)
    def on_pod(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> None:
        reconciler.reconcile_named(namespace, labels[JOB_LABEL])

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def on_job_event(type: str, name: str, namespace: str, **_: Any) -> None:
        if type == "DELETED":
            reconciler.forget(namespace, name)
