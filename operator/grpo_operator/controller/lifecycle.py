"""What to do about a GRPOJob, decided from what was observed: a pure function.

:func:`decide` takes a snapshot of the job and its children and returns a
:class:`Plan`: the full new status, the objects to create or replace, the pods
to delete, and whether the finished job's TTL has run out. The handlers only
observe, call this, and carry the plan out — so every lifecycle rule (suspend,
backoff, deadline, TTL, vLLM recreation, missing references, the export of the
result: controller/exporting.py) is unit-testable without a cluster.

Pod names carry the attempt (``<job>-trainer-<restarts>``); the attempt
counters live in the status and are written *before* the pod of a new attempt
is created, so a crash between the two steps cannot produce two pods.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Optional

from grpo_operator import children
from grpo_operator.api.spec import GRPOJobSpec
from grpo_operator.api.status import PROGRESS_STATUS_FIELDS, ConditionType
from grpo_operator.children import EXPORT, INFERENCE, TRAINER, Job
from grpo_operator.controller.conditions import (
    Cond,
    PodView,
    Transition,
    conditions,
    is_true,
    parse_time,
    rfc3339,
    transitions,
)
from grpo_operator.controller.exporting import decide_export
from grpo_operator.controller.pooling import PoolVerdict, pool_verdict
from grpo_operator.resolve import run_sub_path
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract import exit_codes

# Status fields written from the trainer's progress document.
PROGRESS_FIELDS = PROGRESS_STATUS_FIELDS


@dataclass(frozen=True)
class Observed:
    """A snapshot of one job and everything the operator looked at for it."""

    name: str
    namespace: str
    uid: str
    generation: Optional[int]
    spec: Optional[GRPOJobSpec]
    spec_error: Optional[str]
    status: Mapping[str, Any]
    pvc_exists: bool
    config_map_data: Optional[Mapping[str, str]]
    service_exists: bool
    pods: tuple[PodView, ...]
    missing: tuple[str, ...] = ()
    progress: Optional[Mapping[str, Any]] = None
    retained_claim: bool = False  # the job's claim name is taken by a volume an earlier job left (retainOnDelete)
    # The job's key Secret is known to exist (the operator needs no read access to Secrets: it remembers
    # creating it, or meeting it); when it is not, it is created with ``new_api_key``.
    key_secret_exists: bool = True
    network_policies_found: frozenset[str] = frozenset()  # names of the job's own NetworkPolicies that exist
    # spec.inference.pool: the GRPOInferencePool of that name in the job's namespace (None: none found)
    pool: Optional[Mapping[str, Any]] = None
    secrets_unchecked: str = ""  # why the job's Secret references were not checked ('' when they were)
    now: datetime = field(default_factory=lambda: datetime.now().astimezone())
    # Random, hence an input like the clock: decide() stays a function of what it is given.
    new_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @cached_property
    def verdict(self) -> Optional[PoolVerdict]:
        """Whether the job may use the pool it names (None: it names none)."""
        return pool_verdict(self.name, self.namespace, self.spec, self.pool) if self.spec is not None else None

    @property
    def job(self) -> Job:
        assert self.spec is not None
        avoid = (self.status.get("placement") or {}).get("avoidNodes") or ()
        verdict = self.verdict
        return Job(
            self.name,
            self.namespace,
            self.uid,
            self.spec,
            avoid_nodes=tuple(avoid),
            claim_root=claim_root(self.status),
            pool=verdict.binding if verdict is not None else None,
        )

    def pods_of(self, component: str) -> list[PodView]:
        return [p for p in self.pods if p.component == component]


# status.runPath of a job whose run directory is its volume's root (see claim_root).
ROOT_RUN_PATH = "."


def claim_root(status: Mapping[str, Any]) -> bool:
    """The job's run directory is its volume's root, not runs/<name>: decided once per job and kept.

    A status records it (``runPath``). One from an operator before per-job folders has no
    ``runPath``; if that operator got as far as the pods (it named them in ``trainerPod``
    before creating them), they wrote the run at the root, and the job keeps it there so
    its next attempt resumes instead of starting over. Any other job gets runs/<name>.
    """
    recorded = status.get("runPath")
    if recorded is not None:
        return bool(recorded == ROOT_RUN_PATH)
    return bool(status.get("trainerPod") or status.get("inferencePod"))


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What a reconcile does, in order: patch status, delete, replace, create; then maybe delete the job."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    replace: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    release_claims: list[str] = field(default_factory=list)  # drop the job's owner reference (retainOnDelete)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


def _component(
    obs: Observed,
    component: str,
    attempt: int,
    name: str,
    plan: Plan,
    build: Callable[[Job, int], dict[str, Any]],
    may_create: bool,
) -> Optional[PodView]:
    """Delete stale attempts' pods; create the current attempt's pod when absent. Returns the current pod."""
    current: Optional[PodView] = None
    for pod in obs.pods_of(component):
        if pod.name == name:
            current = pod
        elif not pod.deleting:
            plan.delete_pods.append(pod.name)
    if current is None and may_create:
        plan.create.append(build(obs.job, attempt))
    return current


def waiting_cond(pod: Optional[PodView], what: str, created_now: bool, missing: list[str]) -> Cond:
    """Why a component is not (yet) up, in the pod's own words when it has trouble."""
    if pod is None and missing:
        return Cond.false("MissingReference", f"the {what} pod waits for: " + "; ".join(missing))
    if pod is None:
        return Cond.false("Creating" if created_now else "PodMissing", f"creating the {what} pod")
    if pod.deleting:
        return Cond.false("Terminating", f"{what} pod {pod.name} is terminating")
    if pod.problem_reason == "SchedulingGated":
        return Cond.false(
            "WaitingForAdmission",
            f"{what} pod {pod.name} is gated: {pod.problem_message or 'waiting for Kueue admission'}",
        )
    if pod.problem_reason:
        return Cond.false(pod.problem_reason, f"{what} pod {pod.name}: {pod.problem_message}".rstrip(": "))
    if pod.phase == "Pending":
        return Cond.false("Pending", f"{what} pod {pod.name} is pending")
    return Cond.false("Starting", f"{what} pod {pod.name} is {pod.phase.lower()}, not ready yet")


def _noted(message: str, obs: Observed) -> str:
    """The Created condition's message, with what the operator could not check (Secrets it may not read)."""
    return f"{message}; {obs.secrets_unchecked}" if obs.secrets_unchecked else message


def _progress_message(status: Mapping[str, Any]) -> str:
    step, max_steps = status.get("step"), status.get("maxSteps")
    if step is None:
        return "trainer running"
    return f"step {step}/{max_steps}" if max_steps else f"step {step}"


def _finish(
    status: dict[str, Any], obs: Observed, plan: Plan, keep_trainer: bool, keep_inference: bool = False
) -> None:
    status["completionTime"] = status.get("completionTime") or rfc3339(obs.now)
    if obs.spec is not None and obs.spec.storage.retain_on_delete and obs.pvc_exists:
        plan.release_claims.append(children.pvc_name(obs.job))  # still ours: from now on deleting the job keeps it
    for pod in obs.pods:
        if pod.deleting or pod.name in plan.delete_pods or pod.component == EXPORT:  # the export's (_export)
            continue
        if pod.component == TRAINER and keep_trainer:
            continue  # its logs stay readable; the pod has exited and holds no GPU
        if pod.component == INFERENCE and keep_inference:
            continue  # serving the result (_serve_result looks after it)
        if pod.component == TRAINER and pod.finished:
            continue
        plan.delete_pods.append(pod.name)


def _finished_conditions(succeeded: bool) -> dict[ConditionType, Cond]:
    """A finished job's non-terminal conditions all go False."""
    reason = "JobSucceeded" if succeeded else "JobFailed"
    return {
        "Suspended": Cond.false("NotSuspended"),
        "Training": Cond.false(reason, "the job has finished"),
        "InferenceReady": Cond.false(reason, "the job has finished; the vLLM pod is deleted"),
    }


def _next_inference(
    job: Job, status: dict[str, Any], lost: PodView, plan: Plan, build: Callable[[Job, int], dict[str, Any]]
) -> str:
    """Replace the lost vLLM pod with the next attempt's (counted in status.inferenceRestarts); its name."""
    attempt = int(status["inferenceRestarts"]) + 1
    status["inferenceRestarts"] = attempt
    name = children.inference_pod_name(job, attempt)
    plan.delete_pods.append(lost.name)
    plan.create.append(build(job, attempt))
    plan.events.append(Event("Warning", "InferenceFailed", f"{lost.describe_exit()}; recreating it as {name}"))
    return name


def _changed_since(pod: PodView, render: Callable[[], dict[str, Any]], field: str) -> str:
    """A note for a running pod whose spec differs from what the job renders now ('' when it does not):
    the mutable pod options apply from the next attempt, not to a running pod."""
    if pod.spec_hash is None:
        return ""
    if render()["metadata"]["annotations"][children.SPEC_HASH_ANNOTATION] == pod.spec_hash:
        return ""
    return (
        f"; {field} (or the operator's defaults) changed since pod {pod.name} started: it applies from the "
        "next attempt (suspend and resume the job to apply it now)"
    )


def _ensure(obs: Observed, plan: Plan, manifests: list[dict[str, Any]]) -> None:
    """Create the job's key Secret and those of its NetworkPolicies ``manifests`` that are missing (once a plan)."""
    planned = {(m["kind"], m["metadata"]["name"]) for m in plan.create}
    own_key = not obs.key_secret_exists and obs.spec is not None and obs.spec.inference.pool is None  # else the pool's
    wanted = [children.api_key_secret(obs.job, obs.new_api_key)] if own_key else []
    wanted += [m for m in manifests if m["metadata"]["name"] not in obs.network_policies_found]
    plan.create.extend(m for m in wanted if (m["kind"], m["metadata"]["name"]) not in planned)


def _serving(obs: Observed, succeeded: bool) -> bool:
    return succeeded and obs.spec is not None and obs.spec.serve.enabled


def _serve_result(
    obs: Observed, settings: OperatorSettings, status: dict[str, Any], plan: Plan, new: dict[ConditionType, Cond]
) -> None:
    """A succeeded job's vLLM pod, kept serving the best adapter (or the base model, when it scored best).

    The pod that served training stays (the trainer loaded the result into it as its last act); a lost
    one is recreated as the next attempt with the result adapter on its command line.
    """
    job = obs.job
    adapter = bool((status.get("result") or {}).get("adapter"))
    attempt = int(status["inferenceRestarts"])
    policy = children.serve_network_policy(job, settings)  # the namespace's clients may now reach it
    _ensure(obs, plan, [policy] if policy is not None else [])

    def build(j: Job, a: int) -> dict[str, Any]:
        return children.inference_pod(j, settings, a, serve_result=adapter)

    name = children.inference_pod_name(job, attempt)
    # a training vLLM pod planned in this same pass gives way to the serving one
    plan.create = [m for m in plan.create if not (m["kind"] == "Pod" and m["metadata"]["name"] == name)]
    pod = _component(obs, INFERENCE, attempt, name, plan, build, may_create=True)
    if pod is not None and pod.finished and not pod.deleting:
        name, pod = _next_inference(job, status, pod, plan, build), None
    status["inferencePod"] = name
    endpoint = children.result_endpoint(job, settings, adapter=adapter)
    status["endpoint"] = endpoint
    if pod is not None and pod.ready and not pod.deleting:
        new["InferenceReady"] = Cond.true("Serving", f"vLLM pod {name} serves {endpoint['model']} at {endpoint['url']}")
    else:
        new["InferenceReady"] = Cond.false("Serving", f"starting vLLM pod {name} to serve {endpoint['model']}")


def _serve_from_pool(
    obs: Observed, settings: OperatorSettings, status: dict[str, Any], new: dict[ConditionType, Cond]
) -> None:
    """A succeeded job on a pool: the pool serves its result under the job's name (one of its slots, which the
    pool gives: controller/pool_lifecycle.py), at the pool's Service, with the pool's key; the base model's
    name when the base model scored best (no slot)."""
    verdict = obs.verdict
    assert verdict is not None
    if verdict.reason:  # the pool is gone, or no longer serves the job's model: nothing serves the result
        new["InferenceReady"] = Cond.false(verdict.reason, verdict.message)
        if status.get("endpoint") is not None:
            status["endpoint"] = None
        return
    adapter = bool((status.get("result") or {}).get("adapter"))
    endpoint = children.result_endpoint(obs.job, settings, adapter=adapter)
    status["endpoint"] = endpoint
    status["inferencePod"] = children.pool_server_name(verdict.name, 0)  # what a port-forward reaches
    pool, model = f"GRPOInferencePool {verdict.name}", endpoint["model"]
    if adapter and verdict.full:
        new["InferenceReady"] = Cond.false(
            "PoolFull",
            f"{pool} has no free adapter slot for the result: its slots are held by the jobs it serves; {model} is "
            "served once one is returned (a job finishes, or stops serving its result), or raise the pool's "
            "maxCpuLoras",
        )
    elif adapter and not verdict.attached:
        new["InferenceReady"] = Cond.false("WaitingForPool", f"waiting for {pool} to take the result {model}")
    elif not verdict.ready:
        new["InferenceReady"] = Cond.false("PoolNotReady", f"{pool} has no ready server; it serves {model} once one is")
    else:
        new["InferenceReady"] = Cond.true("Serving", f"{pool} serves {model} at {endpoint['url']}")


def _serve(
    obs: Observed, settings: OperatorSettings, status: dict[str, Any], plan: Plan, new: dict[ConditionType, Cond]
) -> None:
    """A succeeded job's result served (spec.serve): by its own vLLM pod, or by its pool."""
    if obs.verdict is not None:
        _serve_from_pool(obs, settings, status, new)
    else:
        _serve_result(obs, settings, status, plan, new)


def _export(
    obs: Observed, settings: OperatorSettings, status: dict[str, Any], plan: Plan, new: dict[ConditionType, Cond],
    *, succeeded: bool, failed: bool,
) -> bool:  # fmt: skip
    """spec.export's part of the plan (controller/exporting.py decides it); True while an export runs."""
    step = decide_export(
        obs.job,
        settings,
        status.get("export"),
        obs.pods_of(EXPORT),
        succeeded=succeeded,
        failed=failed,
        serving=_serving(obs, succeeded),
        now=obs.now,
    )
    if step.status is not None:
        status["export"] = step.status
    if step.condition is not None:
        new["Exported"] = step.condition
    plan.delete_pods.extend(n for n in step.delete_pods if n not in plan.delete_pods)
    plan.create.extend(step.create)
    plan.events.extend(Event("Warning", "ExportFailed", message) for message in step.failures)
    return step.busy


def _own_inference(
    obs: Observed,
    settings: OperatorSettings,
    status: dict[str, Any],
    plan: Plan,
    new: dict[ConditionType, Cond],
    missing: list[str],
    may_create: bool,
) -> Optional[PodView]:
    """The job's own vLLM pod: created, recreated when lost, its readiness as InferenceReady; the current pod."""
    job = obs.job
    i_attempt = int(status["inferenceRestarts"])
    i_name = children.inference_pod_name(job, i_attempt)
    i_pod = _component(
        obs, INFERENCE, i_attempt, i_name, plan, lambda j, a: children.inference_pod(j, settings, a), may_create
    )
    i_created = i_pod is None and may_create
    if i_pod is not None and i_pod.finished and not i_pod.deleting:
        # A lost vLLM pod is recreated; the trainer waits for the Service to answer again.
        i_name = _next_inference(job, status, i_pod, plan, lambda j, a: children.inference_pod(j, settings, a))
        new["InferenceReady"] = Cond.false("InferenceRestarting", f"{i_pod.describe_exit()}; recreated as {i_name}")
        i_pod = None
    elif i_pod is not None and i_pod.ready and not i_pod.deleting:
        note = _changed_since(i_pod, lambda: children.inference_pod(job, settings, i_attempt), "spec.inference")
        new["InferenceReady"] = Cond.true("Ready", f"vLLM pod {i_pod.name} is ready{note}")
    else:
        new["InferenceReady"] = waiting_cond(i_pod, "vLLM", i_created, missing)
    status["inferencePod"] = i_name
    return i_pod


def _pool_ready(verdict: PoolVerdict) -> Cond:
    """InferenceReady of a job on a pool: the pool's servers, or why it cannot use the pool."""
    if verdict.reason:
        return Cond.false(verdict.reason, verdict.message)
    if verdict.ready:
        return Cond.true("PoolReady", f"GRPOInferencePool {verdict.name} serves the job")
    return Cond.false(
        "PoolNotReady", f"GRPOInferencePool {verdict.name} has no ready server; the trainer waits for one"
    )


def _ttl(status: Mapping[str, Any], spec: Optional[GRPOJobSpec], now: datetime) -> bool:
    if spec is None or spec.run_policy.ttl_seconds_after_finished is None:
        return False
    done = parse_time(status.get("completionTime"))
    return done is not None and now >= done + timedelta(seconds=spec.run_policy.ttl_seconds_after_finished)


def trainer_attempt(status: Mapping[str, Any]) -> int:
    """The current trainer pod's attempt number (its name's suffix): every restart so far."""
    return int(status.get("restarts") or 0) + int(status.get("interruptions") or 0)


def interrupted(pod: PodView) -> bool:
    """The trainer stopped early after a checkpoint (a signal to the container): resume, it did not fail.

    Its exit code says so (grpo_trainer.contract.exit_codes.INTERRUPTED); so does its final report,
    for a trainer that exited 0 after a stop.
    """
    if pod.phase == "Failed" and pod.exit_code == exit_codes.INTERRUPTED:
        return True
    report = pod.final_report
    return pod.phase == "Succeeded" and report is not None and report.get("phase") == "stopped"


def invalid_job(pod: PodView) -> bool:
    """The trainer found the job itself wrong (exit_codes.INVALID_JOB): fail it, spend no retry."""
    return pod.phase == "Failed" and pod.exit_code == exit_codes.INVALID_JOB


def _next_trainer(job: Job, settings: OperatorSettings, status: dict[str, Any], old: PodView, plan: Plan) -> str:
    """Replace the finished trainer pod with the next attempt's (counters already updated in ``status``)."""
    attempt = trainer_attempt(status)
    name = children.trainer_pod_name(job, attempt)
    status["trainerPod"] = name
    plan.delete_pods.append(old.name)
    plan.create.append(children.trainer_pod(job, settings, attempt))
    return name


def made_for_another_pool(pod: PodView, verdict: Optional[PoolVerdict]) -> bool:
    """The trainer pod was rendered for an earlier pool of the name (deleted and created again under it): it
    holds that pool's key, which the pool found now refuses. A pod from before the pool's uid was recorded on
    it is left alone (no way to tell)."""
    binding = verdict.binding if verdict is not None else None
    return binding is not None and pod.pool_uid is not None and pod.pool_uid != binding.uid


def _stopping_trainer(obs: Observed, current: str) -> Optional[PodView]:
    """An earlier attempt's trainer pod still running while it is deleted: the next attempt waits for it, so two
    trainers never write the run directory at once."""
    return next(
        (p for p in obs.pods_of(TRAINER) if p.name != current and p.deleting and not p.finished), None
    )


MAX_AVOID_NODES = 16  # the status schema's bound; the oldest are forgotten first


@dataclass(frozen=True)
class Replacement:
    """Both pods of a ReadWriteOnce job deleted, to be recreated (same names) under a new placement."""

    placement: dict[str, Any]  # the new status.placement
    pods: tuple[str, str]
    message: str


def replace_apart(
    obs: Observed, settings: OperatorSettings, pods: tuple[Optional[PodView], Optional[PodView]]
) -> Optional[Replacement]:
    """Re-place a ReadWriteOnce job's pods that cannot share a node.

    The scheduler places the two pods one at a time: the first may take a node without
    room for the second, which then waits forever. Once the second has been unschedulable
    for ``replace_unplaceable_seconds`` both are deleted and recreated off that node.
    When neither fits anywhere the avoided nodes are forgotten, so nodes that have freed
    up are tried again. Kueue jobs are left to Kueue.
    """
    job = obs.job
    wait = settings.replace_unplaceable_seconds
    if not children.co_located(job) or job.spec.queue_name or wait <= 0:
        return None
    live = [p for p in pods if p is not None and not p.deleting]
    if len(live) != 2:
        return None
    stuck = [p for p in live if not p.node and p.problem_reason == "Unschedulable"]
    since = [parse_time(p.unschedulable_since) for p in stuck]
    if not stuck or any(t is None or obs.now < t + timedelta(seconds=wait) for t in since):
        return None
    placement = dict(obs.status.get("placement") or {})
    avoid = list(placement.get("avoidNodes") or [])
    placed = [p for p in live if p.node]
    if placed:
        held, waiting = placed[0], stuck[0]
        avoid = [n for n in avoid if n != held.node][-(MAX_AVOID_NODES - 1) :] + [str(held.node)]
        message = (
            f"pod {waiting.name} could not be placed beside pod {held.name} on node {held.node} for {wait:g} s "
            f"({waiting.problem_message or 'unschedulable'}); recreating both off that node"
        )
    elif avoid:
        avoid = []
        message = (
            f"neither pod fits on a node not tried yet ({stuck[0].problem_message}); "
            "recreating both, every node allowed again"
        )
    else:
        return None
    placement.update(avoidNodes=avoid, replacements=int(placement.get("replacements") or 0) + 1)
    return Replacement(placement, (live[0].name, live[1].name), message)


def decide(obs: Observed, settings: OperatorSettings) -> Plan:
    """The plan for one job. Never raises on odd observations; always returns a full status."""
    old_conditions = list(obs.status.get("conditions") or [])
    status: dict[str, Any] = {k: v for k, v in obs.status.items() if k != "conditions"}
    status.setdefault("restarts", 0)
    status.setdefault("interruptions", 0)
    status.setdefault("inferenceRestarts", 0)
    status["observedGeneration"] = obs.generation
    plan = Plan(status=status)
    new: dict[ConditionType, Cond] = {}

    def done() -> Plan:
        if obs.spec is not None and obs.spec.export is not None and "Exported" not in new:
            # not (yet) succeeded: the Exported condition says what the export waits for
            failed = new["Failed"].status == "True" if "Failed" in new else is_true(obs.status, "Failed")
            _export(obs, settings, status, plan, new, succeeded=False, failed=failed)
        status["conditions"] = conditions(old_conditions, new, obs.now, obs.generation)
        plan.transitions = transitions(old_conditions, status["conditions"])
        return plan

    if obs.spec is None:
        new["Created"] = Cond.false("InvalidSpec", obs.spec_error or "the spec is invalid")
        return done()

    spec = obs.spec
    job = obs.job
    verdict = obs.verdict
    if verdict is not None:
        status["inferencePool"] = verdict.name
    status["maxSteps"] = spec.grpo.num_train_steps
    status["runPath"] = run_sub_path(job.name, children.cluster_target(job, settings)) or ROOT_RUN_PATH
    if obs.progress:
        for key in PROGRESS_FIELDS:
            if key in obs.progress:
                status[key] = obs.progress[key]

    # ---------------------------------------------------------------- finished
    if is_true(obs.status, "Succeeded") or is_true(obs.status, "Failed"):
        succeeded = is_true(obs.status, "Succeeded")
        _finish(status, obs, plan, keep_trainer=True, keep_inference=_serving(obs, succeeded))
        new.update(_finished_conditions(succeeded))
        if _serving(obs, succeeded):
            _serve(obs, settings, status, plan, new)
        elif status.get("endpoint") is not None:
            status["endpoint"] = None  # a merge patch's null removes it
        exporting = _export(obs, settings, status, plan, new, succeeded=succeeded, failed=not succeeded)
        # the TTL waits for an export under way (bounded by its backoffLimit): deleting the job would stop it
        plan.delete_job = _ttl(status, spec, obs.now) and not exporting
        return done()

    # ---------------------------------------------------------------- shared children
    missing = list(obs.missing)
    if obs.retained_claim:
        claim = children.pvc_name(job)
        missing.append(
            f"PersistentVolumeClaim {claim!r} is the volume an earlier job of this name kept (storage.retainOnDelete): "
            f"set storage.existingClaim: {claim} to train on it (the run resumes from its checkpoints), or delete it"
        )
    refused = verdict is not None and bool(verdict.reason)
    if refused:
        assert verdict is not None
        # another namespace's pool, a missing one, another base model: nothing is created
        new["Created"] = Cond.false(verdict.reason, verdict.message)
    elif not missing:
        pvc = children.persistent_volume_claim(job)
        if pvc is not None and not obs.pvc_exists:
            plan.create.append(pvc)
        cm = children.config_map(job, settings)
        if obs.config_map_data is None:
            plan.create.append(cm)
        elif dict(obs.config_map_data) != cm["data"]:
            plan.replace.append(cm)  # untrustedModel/judge are mutable; a new trainer attempt reads it
        if not obs.service_exists and job.pool is None:
            plan.create.append(children.inference_service(job, settings))
        _ensure(obs, plan, children.network_policies(job, settings))  # before the pods: none runs unguarded
        created = (
            f"config is created; GRPOInferencePool {job.pool.name} serves the job, whose run is in folder "
            f"{status['runPath']} of the pool's volume"
            if job.pool is not None
            else "volume, config, key, Service and pods are created"
        )
        new["Created"] = Cond.true("ChildrenCreated", _noted(created, obs))
    else:
        new["Created"] = Cond.false("MissingReference", _noted("; ".join(missing), obs))

    # ---------------------------------------------------------------- suspended
    if spec.suspend:
        plan.delete_pods.extend(p.name for p in obs.pods if not p.deleting)
        if status.get("startTime") is not None:
            status["startTime"] = None  # as batch/v1 Job: the deadline counts afresh from the resume
        new["Suspended"] = Cond.true("Suspended", "pods deleted; the volume and checkpoints are kept")
        new["Training"] = Cond.false("Suspended", "the job is suspended")
        new["InferenceReady"] = Cond.false("Suspended", "the job is suspended")
        new["Succeeded"] = Cond.false("NotFinished")
        new["Failed"] = Cond.false("NotFinished")
        return done()
    new["Suspended"] = Cond.false("NotSuspended")

    # ---------------------------------------------------------------- deadline
    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(status.get("startTime"))
    if deadline is not None and started is not None and obs.now >= started + timedelta(seconds=deadline):
        new["Failed"] = Cond.true("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={deadline}")
        new["Succeeded"] = Cond.false("JobFailed")
        _finish(status, obs, plan, keep_trainer=False)
        new.update(_finished_conditions(False))
        return done()

    may_create = not missing and not refused

    # ---------------------------------------------------------------- vLLM
    i_pod: Optional[PodView] = None
    if verdict is not None:
        # a pool's server samples for the job; the job has no vLLM pod of its own
        new["InferenceReady"] = _pool_ready(verdict)
    else:
        i_pod = _own_inference(obs, settings, status, plan, new, missing, may_create)

    # ---------------------------------------------------------------- trainer
    t_attempt = trainer_attempt(status)
    t_name = children.trainer_pod_name(job, t_attempt)
    stopping = _stopping_trainer(obs, t_name)
    # on a pool, the trainer starts once the pool holds slots for it
    t_create = may_create and (verdict is None or verdict.attached) and stopping is None
    t_pod = _component(
        obs, TRAINER, t_attempt, t_name, plan, lambda j, a: children.trainer_pod(j, settings, a), t_create
    )
    t_created = t_pod is None and t_create
    status["trainerPod"] = t_name
    if t_pod is not None and t_pod.running and not status.get("startTime"):
        # from the trainer running: time queued (Kueue, quota, a full cluster) is not run time
        status["startTime"] = rfc3339(obs.now)

    replacement = replace_apart(obs, settings, (t_pod, i_pod))
    if replacement is not None:
        status["placement"] = replacement.placement
        plan.delete_pods.extend(n for n in replacement.pods if n not in plan.delete_pods)
        new["Training"] = Cond.false("Replacing", replacement.message)
        new["InferenceReady"] = Cond.false("Replacing", replacement.message)
        new["Succeeded"] = Cond.false("NotFinished")
        new["Failed"] = Cond.false("NotFinished")
        return done()

    if t_pod is not None and t_pod.phase == "Succeeded" and not t_pod.deleting and not interrupted(t_pod):
        new["Succeeded"] = Cond.true("TrainerSucceeded", f"trainer pod {t_pod.name} completed")
        new["Failed"] = Cond.false("JobSucceeded")
        _finish(status, obs, plan, keep_trainer=True, keep_inference=_serving(obs, True))
        new.update(_finished_conditions(True))
        if _serving(obs, True):
            _serve(obs, settings, status, plan, new)
        _export(obs, settings, status, plan, new, succeeded=True, failed=False)
        return done()

    if t_pod is not None and not t_pod.deleting and made_for_another_pool(t_pod, verdict):
        # Its pool was deleted and created again: the new pool has a new key. An interruption, not a failure:
        # the trainer stops (deleted) or has stopped (refused by the pool), and resumes from its checkpoint.
        assert verdict is not None and verdict.binding is not None
        status["interruptions"] = int(status["interruptions"]) + 1
        if t_pod.finished:
            t_name = _next_trainer(job, settings, status, t_pod, plan)
            doing = f"{t_pod.describe_exit()}; resuming as {t_name}"
        else:  # the next attempt starts once this one has stopped (_stopping_trainer)
            t_name = children.trainer_pod_name(job, trainer_attempt(status))
            status["trainerPod"] = t_name
            plan.delete_pods.append(t_pod.name)
            doing = f"stopping trainer pod {t_pod.name}; resuming as {t_name} once it has stopped"
        message = (
            f"GRPOInferencePool {verdict.name} was deleted and created again (uid {verdict.binding.uid}); trainer "
            f"pod {t_pod.name} was made for the earlier one (uid {t_pod.pool_uid}), whose key the new pool "
            f"refuses: {doing}, from the last checkpoint (not counted against backoffLimit)"
        )
        plan.events.append(Event("Warning", "PoolRecreated", message))
        new["Training"] = Cond.false("TrainerRestarting", message)  # its own reason: one PoolRecreated Event
    elif t_pod is not None and t_pod.finished and not t_pod.deleting and refused:
        # The next attempt needs the pool (its key, its volume): it starts once the job may use one again.
        assert verdict is not None
        new["Training"] = Cond.false(
            verdict.reason, f"{t_pod.describe_exit()}; the next attempt starts once the job may use its pool: "
            f"{verdict.message}"
        )
    elif t_pod is not None and interrupted(t_pod) and not t_pod.deleting:
        # Stopped by a signal after a checkpoint (the container, not the pod, was stopped):
        # not a failure, so not counted against backoffLimit.
        status["interruptions"] = int(status["interruptions"]) + 1
        t_name = _next_trainer(job, settings, status, t_pod, plan)
        message = (
            f"{t_pod.describe_exit()}: stopped after a checkpoint at step {status.get('step', 0)}; "
            f"resuming as {t_name} (not counted against backoffLimit)"
        )
        plan.events.append(Event("Normal", "TrainerInterrupted", message))
        new["Training"] = Cond.false("TrainerRestarting", message)
    elif t_pod is not None and t_pod.phase == "Failed" and not t_pod.deleting and invalid_job(t_pod):
        # The program, metric or data is wrong (checked before the model loads): a retry fails the same way.
        report = t_pod.final_report or {}
        reason = str(report.get("error_reason") or "InvalidJob")
        new["Failed"] = Cond.true(reason, f"{report.get('error') or t_pod.describe_exit()} (no retry: fix the job)")
        new["Succeeded"] = Cond.false("JobFailed")
        _finish(status, obs, plan, keep_trainer=True)
        new.update(_finished_conditions(False))
        return done()
    elif t_pod is not None and t_pod.phase == "Failed" and not t_pod.deleting:
        limit = spec.run_policy.backoff_limit
        restarts = int(status["restarts"])
        if restarts < limit:
            status["restarts"] = restarts + 1
            t_name = _next_trainer(job, settings, status, t_pod, plan)
            message = (
                f"{t_pod.describe_exit()}; restart {restarts + 1} of {limit} as {t_name}, "
                "resuming from the last checkpoint"
            )
            plan.events.append(Event("Warning", "TrainerFailed", message))
            new["Training"] = Cond.false("TrainerRestarting", message)
        else:
            message = f"{t_pod.describe_exit()}; backoffLimit {limit} reached"
            new["Failed"] = Cond.true("BackoffLimitExceeded", message)
            new["Succeeded"] = Cond.false("JobFailed")
            _finish(status, obs, plan, keep_trainer=True)
            new.update(_finished_conditions(False))
            return done()
    elif t_pod is not None and t_pod.running:
        note = _changed_since(t_pod, lambda: children.trainer_pod(job, settings, t_attempt), "spec.trainer")
        new["Training"] = Cond.true("Running", _progress_message(status) + note)
    elif t_pod is None and stopping is not None:
        new["Training"] = Cond.false(
            "Terminating", f"trainer pod {stopping.name} is stopping; {t_name} starts once it has"
        )
    elif t_pod is None and refused:
        new["Training"] = Cond.false("NotCreated", "no trainer: the job may not use its pool (see Created)")
    elif t_pod is None and may_create and verdict is not None and not verdict.attached:
        new["Training"] = Cond.false("PoolFull" if verdict.full else "WaitingForPool", verdict.waiting_message)
    else:
        new["Training"] = waiting_cond(t_pod, "trainer", t_created, missing)

    new["Succeeded"] = Cond.false("NotFinished")
    new["Failed"] = Cond.false("NotFinished")
    return done()
