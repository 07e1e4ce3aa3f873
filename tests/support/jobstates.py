"""Observed-state fixtures for the operator's pure decision code: job specs and API-server-shaped pods."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from grpo_operator.api import parse_job
from grpo_operator.children import Job, config_map
from grpo_operator.controller.conditions import PodView, pod_view
from grpo_operator.controller.lifecycle import Observed, Plan
from grpo_operator.settings import OperatorSettings
from support.jobdocs import load_example

SETTINGS = OperatorSettings()
T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)


def spec(**changes: Any):
    """The papillon example's spec with top-level spec fields replaced."""
    doc = copy.deepcopy(load_example())
    for key, value in changes.items():
        doc["spec"][key] = value
    return parse_job(doc).spec


def a_pod(
    name: str,
    component: str,
    phase: str = "Running",
    ready: bool = True,
    node: str | None = "gpu-node-0",
    **status: Any,
) -> PodView:
    """A pod of the job as the API server reports it (on a fake GPU node; ``node=None``: not placed)."""
    conds = [{"type": "Ready", "status": "True" if ready and phase == "Running" else "False"}]
    conds += status.pop("conditions", [])
    return pod_view(
        {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component}},
            "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": conds, "podIP": "127.100.0.7", **status},
        }
    )


def observe(status: dict | None = None, pods: tuple = (), now: datetime = T0, job_spec=None, **kw: Any) -> Observed:
    s = job_spec or spec()
    defaults: dict[str, Any] = dict(
        pvc_exists=True,
        config_map_data=config_map(Job("papillon", "ns", "uid", s), SETTINGS)["data"],
        service_exists=True,
    )
    defaults.update(kw)
    return Observed(
        name="papillon",
        namespace="ns",
        uid="uid",
        generation=1,
        spec=s,
        spec_error=None,
        status=status or {},
        pods=tuple(pods),
        now=now,
        **defaults,
    )


def created_names(plan: Plan) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in plan.create]


def cond(plan: Plan, ctype: str) -> dict:
    return next(c for c in plan.status["conditions"] if c["type"] == ctype)
