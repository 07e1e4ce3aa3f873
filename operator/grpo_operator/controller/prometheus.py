"""Prometheus metrics of the operator.

Per-job series are computed at scrape time from an in-memory cache of the last
status the operator wrote (as KubeRay's job-info metrics do), so a deleted job's
series disappear with it instead of lingering as stale gauges. Labels stay low
cardinality: namespace and name only (plus the state name for the state gauge).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from grpo_operator.api.status import STATE_CONDITIONS
from grpo_operator.controller.conditions import PENDING_STATE, state

STATES: tuple[str, ...] = (*STATE_CONDITIONS, PENDING_STATE)
JOB_LABELS = ("namespace", "name")


@dataclass(frozen=True)
class JobSnapshot:
    """What the metrics show about one job."""

    status: Mapping[str, Any]
    info: Mapping[str, str]


class JobCache:
    """The last known status of every job the operator handles (thread-safe)."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], JobSnapshot] = {}
        self._lock = threading.Lock()

    def update(self, namespace: str, name: str, status: Mapping[str, Any], info: Mapping[str, str]) -> None:
        with self._lock:
            self._jobs[(namespace, name)] = JobSnapshot(dict(status), dict(info))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._jobs.pop((namespace, name), None)

    def items(self) -> list[tuple[tuple[str, str], JobSnapshot]]:
        with self._lock:
            return list(self._jobs.items())


_NUMERIC: tuple[tuple[str, str, str], ...] = (
    ("grpo_job_step", "step", "Completed GRPO steps."),
    ("grpo_job_max_steps", "maxSteps", "GRPO steps the job will run."),
    ("grpo_job_progress_ratio", "progressPercentage", "Progress of the job, 0..1."),
    ("grpo_job_train_reward", "trainReward", "Mean reward of the latest step's rollouts."),
    ("grpo_job_val_score", "valScore", "Latest validation score."),
    ("grpo_job_best_val_score", "bestValScore", "Best validation score so far."),
    ("grpo_job_restarts", "restarts", "Trainer pod failures restarted (counted against backoffLimit)."),
    ("grpo_job_interruptions", "interruptions", "Trainer pods stopped after a checkpoint and resumed."),
    ("grpo_job_inference_restarts", "inferenceRestarts", "vLLM pod restarts."),
)


class JobCollector(Collector):
    """Yields the per-job families from the cache at each scrape."""

    def __init__(self, cache: JobCache) -> None:
        self.cache = cache

    def describe(self) -> list[Any]:
        return []  # computed at scrape time; nothing to pre-register

    def collect(self) -> Iterator[Any]:
        jobs = self.cache.items()
        info = InfoMetricFamily("grpo_job", "Static facts of a GRPOJob.", labels=JOB_LABELS)
        states = GaugeMetricFamily(
            "grpo_job_state", "1 for the job's current state (its first True condition).", labels=(*JOB_LABELS, "state")
        )
        numeric = {metric: GaugeMetricFamily(metric, doc, labels=JOB_LABELS) for metric, _, doc in _NUMERIC}
        for (namespace, name), snap in jobs:
            info.add_metric([namespace, name], dict(snap.info))
            current = state(snap.status)
            for s in STATES:
                states.add_metric([namespace, name, s], 1.0 if s == current else 0.0)
            for metric, key, _ in _NUMERIC:
                value = snap.status.get(key)
                if value is None:
                    continue
                if key == "progressPercentage":
                    value = float(value) / 100.0
                numeric[metric].add_metric([namespace, name], float(value))
        yield info
        yield states
        yield from numeric.values()


# (status field, series name after grpo_pool_, help): a list field counts its entries.
POOL_SERIES = (
    ("readyReplicas", "ready_replicas", "vLLM servers of the pool that are ready."),
    ("replicas", "replicas", "vLLM servers the pool has."),
    ("slots", "adapter_slots", "Adapter slots of the pool's servers (maxCpuLoras)."),
    ("slotsUsed", "adapter_slots_used", "Adapter slots held by the jobs attached to the pool."),
    ("adaptersLoaded", "adapters_loaded", "Adapters the pool's server lists for its jobs, as their trainers last saw."),
    ("jobs", "jobs_attached", "Jobs the pool serves: those that train, and succeeded ones whose result it serves."),
    ("resultsServed", "results_served", "Succeeded jobs' results the pool serves (spec.serve), one slot each."),
    ("waiting", "jobs_waiting", "Jobs that name the pool and wait for its slots."),
)


class OperatorMetrics:
    """The operator's registry: per-job collector plus reconcile counters and latency."""

    def __init__(self, cache: Optional[JobCache] = None) -> None:
        self.registry = CollectorRegistry()
        self.cache = cache or JobCache()
        self.registry.register(JobCollector(self.cache))
        self.reconciles = Counter(
            "grpo_operator_reconcile", "Reconciles of a GRPOJob.", JOB_LABELS, registry=self.registry
        )
        self.errors = Counter(
            "grpo_operator_reconcile_errors", "Reconciles that raised an error.", JOB_LABELS, registry=self.registry
        )
        self.conflicts = Counter(
            "grpo_operator_status_conflicts",
            "Status writes refused because the job had changed since it was read (read again and decided afresh).",
            registry=self.registry,
        )
        self.latency = Histogram(
            "grpo_operator_reconcile_duration_seconds",
            "Wall time of one reconcile (API calls included).",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

        # GRPOInferencePools: one series per pool (namespace, pool), set by each of its reconciles
        self.pool_gauges = {
            field: Gauge(f"grpo_pool_{metric}", help_text, ("namespace", "pool"), registry=self.registry)
            for field, metric, help_text in POOL_SERIES
        }

    def update_pool(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """The pool's series from its status."""
        for field, gauge in self.pool_gauges.items():
            value = status.get(field)
            gauge.labels(namespace, name).set(len(value) if isinstance(value, list) else float(value or 0))

    def forget_pool(self, namespace: str, name: str) -> None:
        for gauge in self.pool_gauges.values():
            try:
                gauge.remove(namespace, name)
            except KeyError:
                pass

    def forget(self, namespace: str, name: str) -> None:
        self.cache.forget(namespace, name)
        for counter in (self.reconciles, self.errors):
            try:
                counter.remove(namespace, name)
            except KeyError:
                pass

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics in a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
