"""Reading pods and writing conditions: the vocabulary of GRPOJob.status.

Pure functions only. A pod's real trouble (unschedulable, image pull, missing
Secret key) is read from its conditions and container states so the job's
conditions can say what is wrong instead of a bare "Pending".

Conditions are always the full list in CONDITION_ORDER (merge patches replace
lists), and ``lastTransitionTime`` moves only when a condition's status changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from grpo_operator.api.status import CONDITION_ORDER
from grpo_operator.children.meta import POOL_UID_ANNOTATION
from grpo_operator.children.podspec import SPEC_HASH_ANNOTATION

# Container waiting reasons that mean the pod will not start on its own.
CONTAINER_PROBLEMS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
# Reasons worth a Warning event when a condition turns to them.
WARNING_REASONS = frozenset(
    CONTAINER_PROBLEMS
    | {
        "Unschedulable",
        "MissingReference",
        "InvalidSpec",
        "CreateFailed",
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "InvalidJob",
        "InvalidProgram",
        "InvalidMetric",
        "InvalidData",
        "TrainerFailed",
        "InferenceFailed",
        "Evicted",
        "Replacing",
        "ExportFailed",
        "PoolNotFound",
        "PoolInAnotherNamespace",
        "PoolMismatch",
        "PoolInvalid",
        "PoolFull",
        "ServerFailed",
    }
)
PENDING_STATE = "Pending"
EXIT_WHY_CHARS = 400  # of a container's last words in an Event or condition message


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- pods


@dataclass(frozen=True)
class PodView:
    """What the operator needs to know about one of a job's pods."""

    name: str
    component: str
    phase: str
    ready: bool = False
    deleting: bool = False
    node: Optional[str] = None
    ip: Optional[str] = None
    start_time: Optional[str] = None
    problem_reason: Optional[str] = None
    problem_message: str = ""
    unschedulable_since: Optional[str] = None  # PodScheduled=False's lastTransitionTime
    spec_hash: Optional[str] = None  # the operator's hash of the spec it rendered (children.SPEC_HASH_ANNOTATION)
    pool_uid: Optional[str] = None  # a trainer's: the uid of the pool it was rendered for (POOL_UID_ANNOTATION)
    exit_code: Optional[int] = None
    exit_reason: Optional[str] = None
    exit_message: str = ""  # the container's termination message (the trainer's final progress, or a log tail)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def final_report(self) -> Optional[dict[str, Any]]:
        """The trainer's final progress document, when its termination message is one."""
        if not self.exit_message.startswith("{"):
            return None
        try:
            doc = json.loads(self.exit_message)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting

    def describe_exit(self) -> str:
        parts = [f"pod {self.name} {self.phase.lower()}"]
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        if self.exit_reason:
            parts.append(self.exit_reason)
        if self.problem_message:
            parts.append(self.problem_message)
        why = self._why()
        if why:
            parts.append(why)
        return ", ".join(parts)

    def _why(self) -> str:
        """What the container said as it ended: the trainer's error, or the last lines of its log."""
        report = self.final_report
        if report is not None:
            text = str(report.get("error") or "")
        else:
            text = " | ".join(line.strip() for line in self.exit_message.strip().splitlines()[-3:] if line.strip())
        return text if len(text) <= EXIT_WHY_CHARS else "..." + text[-(EXIT_WHY_CHARS - 3) :]


def _problem(pod: Mapping[str, Any]) -> tuple[Optional[str], str]:
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            return reason, cond.get("message") or ""
    statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CONTAINER_PROBLEMS:
            return waiting["reason"], f"container {cs.get('name')}: {waiting.get('message') or waiting['reason']}"
    if status.get("phase") == "Failed" and status.get("reason"):
        return status["reason"], status.get("message") or ""
    return None, ""


def _exit(pod: Mapping[str, Any]) -> tuple[Optional[int], Optional[str], str]:
    """The container's exit, or the init container's that failed (a code fetch of spec.code)."""
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode"):
            reason = f"init container {cs.get('name')} {terminated.get('reason') or 'failed'}"
            return terminated.get("exitCode"), reason, terminated.get("message") or ""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return terminated.get("exitCode"), terminated.get("reason"), terminated.get("message") or ""
    return None, None, ""


def pod_view(pod: Mapping[str, Any], component_label: str = "app.kubernetes.io/component") -> PodView:
    """Summarise a pod (as the API returns it, camelCase dict)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    reason, message = _problem(pod)
    code, exit_reason, exit_message = _exit(pod)
    unscheduled = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled" and c.get("status") == "False"),
        {},
    )
    return PodView(
        name=meta.get("name", ""),
        component=(meta.get("labels") or {}).get(component_label, ""),
        phase=status.get("phase") or "Pending",
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        node=spec.get("nodeName"),
        ip=status.get("podIP"),
        start_time=status.get("startTime"),
        problem_reason=reason,
        problem_message=message,
        unschedulable_since=unscheduled.get("lastTransitionTime"),
        spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
        pool_uid=(meta.get("annotations") or {}).get(POOL_UID_ANNOTATION),
        exit_code=code,
        exit_reason=exit_reason,
        exit_message=exit_message,
    )


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Cond:
    """A condition as a decision states it (the time is filled in by :func:`conditions`)."""

    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""

    @classmethod
    def true(cls, reason: str, message: str = "") -> Cond:
        return cls("True", reason, message)

    @classmethod
    def false(cls, reason: str, message: str = "") -> Cond:
        return cls("False", reason, message)

    @classmethod
    def unknown(cls, reason: str, message: str = "") -> Cond:
        return cls("Unknown", reason, message)


def conditions(
    old: list[Mapping[str, Any]],
    new: Mapping[str, Cond],
    now: datetime,
    generation: Optional[int],
    order: Sequence[str] = CONDITION_ORDER,
) -> list[dict[str, Any]]:
    """The full condition list in ``order`` (a job's, or a pool's); types not in ``new`` keep their old value."""
    previous = {c["type"]: c for c in old}
    out: list[dict[str, Any]] = []
    for ctype in order:
        cond = new.get(ctype)
        before = previous.get(ctype)
        if cond is None:
            if before is not None:
                out.append(dict(before))
            continue
        changed = before is None or before.get("status") != cond.status
        out.append(
            {
                "type": ctype,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message[:32768],
                "lastTransitionTime": rfc3339(now) if changed else before["lastTransitionTime"],  # type: ignore[index]
                "observedGeneration": generation,
            }
        )
    return out


def condition(status: Mapping[str, Any], ctype: str) -> Optional[Mapping[str, Any]]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), None)


def is_true(status: Mapping[str, Any], ctype: str) -> bool:
    c = condition(status, ctype)
    return c is not None and c.get("status") == "True"


def state(status: Mapping[str, Any]) -> str:
    """What the State printer column shows: the first True condition, else Pending."""
    for c in status.get("conditions") or []:
        if c.get("status") == "True":
            return str(c["type"])
    return PENDING_STATE


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason (each becomes an Event)."""

    ctype: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return self.reason in WARNING_REASONS

    def event_message(self) -> str:
        return f"{self.ctype}={self.status}" + (f": {self.message}" if self.message else "")


def transitions(old: list[Mapping[str, Any]], new: list[Mapping[str, Any]]) -> list[Transition]:
    before = {c["type"]: (c.get("status"), c.get("reason")) for c in old}
    out = []
    for c in new:
        if before.get(c["type"]) != (c["status"], c["reason"]):
            out.append(Transition(c["type"], c["status"], c["reason"], c.get("message", "")))
    return out
