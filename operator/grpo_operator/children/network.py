"""The job's NetworkPolicies: who may open a connection to its pods (settings.network_policies).

* ``<job>-inference``: the vLLM pod's port admits the job's own trainer pod, and the metrics
  namespaces (vLLM serves /metrics on the same port; everything else there needs the key).
* ``<job>-trainer``: the trainer's port (/progress, /metrics) admits the operator's pods and
  the metrics namespaces.
* ``<pool>-inference``: an inference pool's servers admit the trainer pods of the jobs it serves (which
  the operator labels with the pool's name) and the metrics namespaces; a job on a pool has no
  ``<job>-inference`` of its own.
* ``<job>-serve``: created once the job serves its result (spec.serve): the vLLM pod admits every
  pod of the job's namespace, the clients the endpoint is for (they need the key as well).
* ``<pool>-serve``: the same for a pool, once it serves a finished job's result. Kept while the pool lives
  (the operator only creates policies): a pool that has served a result admits its namespace from then on.

Ingress only: the trainer reaches hubs, data URLs and external LLMs, so egress stays open.
Policies add up, so a cluster admin widens what a job's pods admit with a policy of their own.
Pods are told apart by their labels, which anyone who may create pods in the namespace can
copy: the key, not the policy, is what keeps such a pod from using the server.
"""

from __future__ import annotations

from typing import Any, Optional

from grpo_operator.children.meta import (
    INFERENCE,
    NETWORK,
    POOL_CLIENT_LABEL,
    TRAINER,
    Job,
    Owner,
    Pool,
    network_policy_name,
    object_meta,
    selector_labels,
)
from grpo_operator.settings import OperatorSettings

SERVE = "serve"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}


def _policy(job: Owner, name: str, component: str, port: int, *sources: list[dict[str, Any]]) -> dict[str, Any]:
    """Ingress to ``component``'s pods on ``port`` from each non-empty list of peers."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(job, name, NETWORK),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(job, component)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": port}]} for peers in sources if peers],
        },
    }


def network_policies(job: Job, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The policies of a job that trains; none when the operator does not manage NetworkPolicies."""
    if not settings.network_policies:
        return []
    scrapers = [_namespace(ns) for ns in settings.metrics_namespaces]
    trainer = [{"podSelector": {"matchLabels": selector_labels(job, TRAINER)}}]
    operator_pods = {"podSelector": {"matchLabels": settings.operator_pod_labels}}
    operator = [{**_namespace(settings.operator_namespace), **operator_pods}]
    inference = [] if job.pool is not None else [  # a job on a pool has no vLLM pod: the pool's policy admits it
        _policy(job, network_policy_name(job, INFERENCE), INFERENCE, settings.inference_port, trainer, scrapers)
    ]
    return [*inference, _policy(job, network_policy_name(job, TRAINER), TRAINER, settings.trainer_port, operator, scrapers)]


def pool_network_policy(pool: Pool, settings: OperatorSettings) -> Optional[dict[str, Any]]:
    """A pool's policy: its servers admit the trainers of the jobs it serves (labelled with its name) and the
    metrics namespaces; None without NetworkPolicies."""
    if not settings.network_policies:
        return None
    clients = [{"podSelector": {"matchLabels": {POOL_CLIENT_LABEL: pool.name}}}]
    scrapers = [_namespace(ns) for ns in settings.metrics_namespaces]
    return _policy(pool, network_policy_name(pool, INFERENCE), INFERENCE, settings.inference_port, clients, scrapers)


def serve_network_policy(job: Owner, settings: OperatorSettings) -> Optional[dict[str, Any]]:
    """The policy that opens a serving job's vLLM (a pool serving a finished job's result) to its namespace;
    None without NetworkPolicies."""
    if not settings.network_policies:
        return None
    namespace = [{"podSelector": {}}]  # a peer without namespaceSelector: the policy's own namespace
    return _policy(job, network_policy_name(job, SERVE), INFERENCE, settings.inference_port, namespace)
