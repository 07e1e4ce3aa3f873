"""``grpo-operator`` / ``python -m grpo_operator``: run the operator.

Watches the whole cluster, or only the namespaces given (``--namespace`` or
GRPO_NAMESPACES), serves /metrics and a liveness endpoint (/healthz, red when the
reconcile workers or the /progress pool are wedged: controller/liveness.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

import kopf
from kubernetes import client, config

from grpo_operator.controller.handlers import configure_kopf, register
from grpo_operator.controller.kube import Cluster
from grpo_operator.controller.pool_reconcile import PoolReconciler
from grpo_operator.controller.prometheus import OperatorMetrics
from grpo_operator.controller.reconcile import IO_THREADS_PER_WORKER, Reconciler
from grpo_operator.settings import OperatorSettings

log = logging.getLogger("grpo_operator")


# Connections kept open to the API server: at least one per thread that calls it
# (the reconcile threads, the reconciler's I/O threads, asyncio's default executor).
# The client's default (5 per CPU) made busy threads discard and re-open TLS
# connections under load.
MIN_API_CONNECTIONS = 64


def api_client(settings: OperatorSettings) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    threads = (1 + IO_THREADS_PER_WORKER) * settings.reconcile_workers + 8
    cfg.connection_pool_maxsize = max(MIN_API_CONNECTIONS, threads)
    return client.ApiClient(cfg)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo-operator", description="Run the GRPOJob operator (Kopf).")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch the whole cluster (default)")
    p.add_argument("--metrics-port", type=int, help="port of /metrics (0: off)")
    p.add_argument("--health-port", type=int, help="port of the liveness endpoint /healthz (0: off)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    settings = OperatorSettings.from_env()
    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["namespaces"] = tuple(args.namespace)
    if args.all_namespaces:
        overrides["namespaces"] = ()
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    if args.health_port is not None:
        overrides["health_port"] = args.health_port
    if args.log_level:
        overrides["log_level"] = args.log_level
    return settings.model_copy(update=overrides)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    metrics = OperatorMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    cluster = Cluster(api_client(settings))
    reconciler = Reconciler(cluster, settings, metrics)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, settings, PoolReconciler(cluster, settings, metrics))
    scope = ", ".join(settings.namespaces) if settings.namespaces else "all namespaces"
    log.info(
        "grpo-operator watching %s; metrics on :%s, liveness on :%s", scope, settings.metrics_port, settings.health_port
    )
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    kopf.run(
        registry=registry,
        settings=kopf_settings,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
