"""The Argo CD health check (docs/argocd-health.lua) on GRPOJob status documents.

The script runs in gopher-lua (Argo CD's Lua VM) with Argo CD's default library
set (tests/gitops/luaeval). The status documents here are made by the operator's
own decision code (``lifecycle.decide`` on observed pods shaped like the API
server's, and ``status.conditions`` for the refused-creation case), so they are
exactly what the operator writes; tests/cluster/test_chart_install.py runs the
same check on the statuses of live jobs on the test control plane.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from gitops.luahealth import Health, evaluate, grpojob
from grpo_operator.children import Job, config_map
from grpo_operator.controller.conditions import CONTAINER_PROBLEMS, Cond, PodView, conditions
from grpo_operator.controller.lifecycle import Observed, decide
from support.jobstates import SETTINGS, T0, a_pod, spec

SCHEDULER_SAYS = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


def waiting(name: str, component: str, reason: str) -> PodView:
    statuses = [{"name": component, "state": {"waiting": {"reason": reason, "message": f"{reason} for {name}"}}}]
    return a_pod(name, component, "Pending", ready=False, containerStatuses=statuses)


def decided(
    status: dict[str, Any] | None = None, pods: tuple[PodView, ...] = (), now: datetime = T0, **kw: Any
) -> dict[str, Any]:
    """The status the operator writes after one reconcile of this observation."""
    s = kw.pop("job_spec", None) or spec()
    observed: dict[str, Any] = {
        "pvc_exists": True,
        "config_map_data": config_map(Job("papillon", "ns", "uid", s), SETTINGS)["data"],
        "service_exists": True,
    }
    observed.update(kw)
    obs = Observed("papillon", "ns", "uid", 1, s, None, status or {}, pods=pods, now=now, **observed)
    return decide(obs, SETTINGS).status


def scheduled(reason: str, message: str) -> dict[str, str]:
    return {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}


NOTHING_YET = {"pvc_exists": False, "config_map_data": None, "service_exists": False}
RUNNING = (a_pod("papillon-trainer-0", "trainer"), a_pod("papillon-inference-0", "inference"))
VLLM_STARTING = (RUNNING[0], a_pod("papillon-inference-0", "inference", ready=False))
UNSCHEDULABLE = a_pod(
    "papillon-trainer-0", "trainer", "Pending", False, conditions=[scheduled("Unschedulable", SCHEDULER_SAYS)]
)
GATED = a_pod("papillon-inference-0", "inference", "Pending", False, conditions=[scheduled("SchedulingGated", "gated")])
OOM = a_pod("papillon-trainer-0", "trainer", "Failed", containerStatuses=[
    {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])  # fmt: skip
DONE = a_pod("papillon-trainer-0", "trainer", "Succeeded")
REFUSAL = 'pods "papillon-trainer-1" is forbidden: violates PodSecurity'
BAD_SPEC = "spec.grpo.num_train_steps: must be >= 1"

TRAINING = decided(pods=RUNNING, progress={"step": 7, "trainReward": 0.42})
SUCCEEDED = decided({**TRAINING, "bestValScore": 0.61, "bestStep": 40}, pods=(DONE, RUNNING[1]))
# what reconcile.py writes when the API server refuses a child
REFUSED = {
    **TRAINING,
    "conditions": conditions(TRAINING["conditions"], {"Created": Cond.false("CreateFailed", REFUSAL)}, T0, 1),
}
NO_RETRIES = spec(runPolicy={"backoffLimit": 0})
ONE_MINUTE = spec(runPolicy={"activeDeadlineSeconds": 60})
STATUSES: dict[str, tuple[dict[str, Any] | None, str, str]] = {
    # name: (status the operator wrote, expected health, text the message must contain)
    "no status yet": (None, "Progressing", "Waiting for the operator"),
    "children being created": (decided(**NOTHING_YET), "Progressing", "Creating: creating the vLLM pod"),
    "vLLM starting": (decided(pods=VLLM_STARTING), "Progressing",
                      "Running: trainer running; Starting: vLLM pod papillon-inference-0 is running, not ready yet"),
    "unschedulable": (decided(pods=(UNSCHEDULABLE, RUNNING[1])), "Progressing",
                      f"Unschedulable: trainer pod papillon-trainer-0: {SCHEDULER_SAYS}"),
    "waiting for Kueue": (decided(pods=(GATED,)), "Progressing",
                          "WaitingForAdmission: vLLM pod papillon-inference-0 is gated"),
    "training": (TRAINING, "Progressing", "Running: step 7/500"),
    "trainer restarting": (decided(TRAINING, pods=(OOM, RUNNING[1])), "Progressing",
                           "TrainerRestarting: pod papillon-trainer-0 failed, exit code 137, OOMKilled; restart 1"),
    "suspended": (decided(TRAINING, pods=RUNNING, job_spec=spec(suspend=True)), "Suspended",
                  "Suspended: pods deleted; the volume and checkpoints are kept"),
    "succeeded": (SUCCEEDED, "Healthy",
                  "TrainerSucceeded: trainer pod papillon-trainer-0 completed (best validation score 0.61 at step 40)"),
    "succeeded, reconciled again": (decided(SUCCEEDED, pods=(DONE,)), "Healthy", "TrainerSucceeded"),
    "failed at backoffLimit": (decided(TRAINING, pods=(OOM, RUNNING[1]), job_spec=NO_RETRIES), "Degraded",
                               "BackoffLimitExceeded: pod papillon-trainer-0 failed, exit code 137"),
    "deadline exceeded": (decided({**TRAINING, "startTime": "2026-11-25T11:00:00Z"}, pods=RUNNING, job_spec=ONE_MINUTE),
                          "Degraded", "DeadlineExceeded: the job ran longer than activeDeadlineSeconds=60"),
    "missing Secret": (decided(missing=("Secret 'openai-api-key' not found in namespace 'ns'",), **NOTHING_YET),
                       "Degraded", "MissingReference: Secret 'openai-api-key' not found"),
    "invalid spec": (decide(Observed("papillon", "ns", "uid", 1, None, BAD_SPEC, {}, False, None, False, (), now=T0),
                            SETTINGS).status, "Degraded", f"InvalidSpec: {BAD_SPEC}"),
    "pod refused at admission": (REFUSED, "Degraded", f"CreateFailed: {REFUSAL}"),
}  # fmt: skip
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    name: (grpojob(status), health, message) for name, (status, health, message) in STATUSES.items()
}
CASES["spec changed, not yet observed"] = (
    grpojob(TRAINING, generation=2),
    "Progressing",
    "Waiting for the operator to observe generation 2",
)
# Every reason the operator treats as "this pod will not start on its own", on either pod.
for _reason in sorted(CONTAINER_PROBLEMS):
    CASES[f"trainer {_reason}"] = (
        grpojob(decided(pods=(waiting("papillon-trainer-0", "trainer", _reason), RUNNING[1]))),
        "Degraded",
        f"{_reason}: trainer pod papillon-trainer-0: container trainer: {_reason} for papillon-trainer-0",
    )
    CASES[f"vLLM {_reason}"] = (
        grpojob(decided(pods=(RUNNING[0], waiting("papillon-inference-0", "inference", _reason)))),
        "Degraded",
        f"{_reason}: vLLM pod papillon-inference-0",
    )


@pytest.fixture(scope="module")
def health() -> dict[str, Health]:
    """Every case through the Lua check in one gopher-lua process."""
    names = list(CASES)
    results = evaluate([CASES[n][0] for n in names])
    return dict(zip(names, results, strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_health_of(case: str, health: dict[str, Health]):
    _, expected_status, expected_message = CASES[case]
    got = health[case]
    assert got.error == ""
    assert got.status == expected_status, got
    assert expected_message in got.message, got


def test_every_argo_state_is_covered():
    assert {status for _, status, _ in CASES.values()} == {"Progressing", "Healthy", "Degraded", "Suspended"}


def test_the_evaluator_has_argo_cds_default_libraries(tmp_path):
    """Argo CD runs argocd-cm health checks without the string library: so must the check (and the evaluator)."""
    script = tmp_path / "uses_string.lua"
    script.write_text('local hs = {}\nhs.status = "Healthy"\nhs.message = string.upper("ok")\nreturn hs\n')
    closed, opened = evaluate([grpojob(None)], script)[0], evaluate([grpojob(None)], script, open_libs=True)[0]
    assert "string" in closed.error and closed.status == ""
    assert (opened.status, opened.message) == ("Healthy", "OK")
    bogus = tmp_path / "bogus.lua"
    bogus.write_text('return {status = "Fine"}\n')
    assert evaluate([grpojob(None)], bogus)[0] == Health("Unknown", "Lua returned an invalid health status")


def test_time_moves_a_running_job_to_degraded_only_via_its_deadline():
    """A job past activeDeadlineSeconds is Degraded; one second earlier it is still Progressing."""
    started = {**TRAINING, "startTime": "2026-11-25T12:00:00Z"}
    before = decided(started, pods=RUNNING, now=T0 + timedelta(seconds=59), job_spec=ONE_MINUTE)
    after = decided(started, pods=RUNNING, now=T0 + timedelta(seconds=60), job_spec=ONE_MINUTE)
    got = evaluate([grpojob(before), grpojob(after)])
    assert [h.status for h in got] == ["Progressing", "Degraded"]
