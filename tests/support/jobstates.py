"""Observed-state fixtures for the operator's pure decision code: job specs and API-server-shaped pods."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from grpo_operator.api import parse_job
from grpo_operator.controller.conditions import PodView, pod_view
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
