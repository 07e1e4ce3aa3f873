"""The export of a succeeded job's result (spec.export), decided from what was observed: pure.

After Succeeded, the destinations of spec.export that have no record of being exported with
their present settings are exported by pod ``<job>-export-<attempt>`` (grpo_operator.children.export).
Its report, read from the pod's termination message, becomes ``status.export``: per destination
where it went, when, and the hash of the settings exported. So the same spec.export exports once,
a changed or added destination is exported when it appears (``grpo export`` sets the field on a
finished job), and the operator restarting in between neither repeats nor forgets one.

A failed export pod is retried as the next attempt up to ``spec.export.backoffLimit`` times, then
``Exported=False/ExportFailed`` names each destination's error; the job stays Succeeded. The last
export pod is kept, for its logs, until the next export or the job's deletion. The attempt
counter is written to the status before its pod is created (as the trainer's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from grpo_operator.children import Job, export_pod, export_pod_name
from grpo_operator.controller.conditions import Cond, PodView, rfc3339
from grpo_operator.resolve import destination_hash, destination_name, export_spec_hash
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.export import Exported, ExportReport


@dataclass
class ExportStep:
    """What the lifecycle adds to its plan for the export."""

    status: Optional[dict[str, Any]] = None  # the new status.export (None: as it was)
    condition: Optional[Cond] = None  # the Exported condition (None: as it was)
    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # each a Warning event ExportFailed
    busy: bool = False  # an export is under way: runPolicy.ttlSecondsAfterFinished waits for it


def _done(record: Mapping[str, Any]) -> bool:
    return bool(record.get("location")) and not record.get("error")


def _describe(records: Sequence[Mapping[str, Any]]) -> str:
    """Each destination's result, for the Exported condition."""
    parts = []
    for r in records:
        if _done(r):
            parts.append(f"{r['destination']} -> {r['location']}" + (" (merged)" if r.get("merged") else ""))
        elif r.get("error"):
            parts.append(f"{r['destination']}: failed: {r['error']}")
        else:
            parts.append(f"{r['destination']}: exporting")
    return "; ".join(parts)


def _recorded(report: Optional[ExportReport], index: int, now: datetime) -> Optional[dict[str, Any]]:
    """A destination's record from the export's report (None: the report does not mention it)."""
    entry: Optional[Exported] = None
    if report is not None:
        entry = next((d for d in report.destinations if d.index == index), None)
    if entry is None:
        return None
    record: dict[str, Any] = {"destination": entry.name, "specHash": entry.spec_hash, "merged": entry.merged}
    if entry.ok:
        exported_at = entry.exported_at or now
        record.update(location=entry.location, exportedAt=rfc3339(exported_at), step=report.step if report else None)
    else:
        record["error"] = entry.error
    return {k: v for k, v in record.items() if v is not None}


def decide_export(
    job: Job,
    settings: OperatorSettings,
    old: Optional[Mapping[str, Any]],
    pods: Sequence[PodView],
    *,
    succeeded: bool,
    failed: bool,
    serving: bool,
    now: datetime,
) -> ExportStep:
    """The export's part of a reconcile. ``pods``: the job's export pods; ``serving``: its vLLM pod
    stays (with a ReadWriteOnce volume the export pod must join it)."""
    step = ExportStep()
    export = job.spec.export
    live = [p for p in pods if not p.deleting]
    if export is None:
        # not (or no longer) asked for: an export under way is stopped; what was exported stays recorded
        step.delete_pods = [p.name for p in live if not p.finished]
        if old is not None and old.get("phase") == "Exporting":
            step.status = {**old, "phase": "Cancelled"}
            step.condition = Cond.false("ExportCancelled", "spec.export was removed; the export pod is deleted")
        return step
    if not succeeded:
        step.condition = (
            Cond.false("NotExported", "the job failed: only a succeeded job's result is exported")
            if failed
            else Cond.false("NotFinished", "the result is exported once the job has succeeded")
        )
        return step

    spec_hash = export_spec_hash(export)
    wanted = [(destination_name(d, job.name), destination_hash(d), d.merged) for d in export.destinations]
    if old is None or old.get("specHash") != spec_hash or old.get("phase") == "Cancelled":
        # a new spec.export (or a first one): what it adds or changes is exported, once
        exported = {r["specHash"]: r for r in (old or {}).get("destinations") or [] if _done(r)}
        records = [exported.get(h) or {"destination": n, "specHash": h, "merged": m} for n, h, m in wanted]
        pending = [i for i, r in enumerate(records) if not _done(r)]
        attempt = int(old.get("attempt") or 0) + 1 if old is not None and old.get("pod") else 0
        status: dict[str, Any] = {"specHash": spec_hash, "destinations": records, "failures": 0}
        if not pending:
            step.status = {**status, "phase": "Exported", "attempt": attempt, "pod": (old or {}).get("pod")}
            step.status = {k: v for k, v in step.status.items() if v is not None}
            step.condition = Cond.true("Exported", _describe(records))
            return step
        name = export_pod_name(job, attempt)
        step.status = {**status, "phase": "Exporting", "attempt": attempt, "pod": name}
        step.delete_pods = [p.name for p in live if p.name != name]  # the last export's, kept for its logs till now
        step.create.append(export_pod(job, settings, attempt, pending, join_inference=serving))
        step.condition = Cond.unknown("Exporting", f"pod {name}: " + _describe(records))
        step.busy = True
        return step

    records = [dict(r) for r in old.get("destinations") or []]
    if old.get("phase") != "Exporting":  # settled: Exported or Failed, as recorded
        step.condition = _settled(old.get("phase"), records)
        return step

    attempt = int(old.get("attempt") or 0)
    name = export_pod_name(job, attempt)
    pending = [i for i, r in enumerate(records) if not _done(r)]
    step.delete_pods = [p.name for p in live if p.name != name]
    current = next((p for p in pods if p.name == name), None)
    step.busy = True
    if current is None:  # not created yet, or deleted (evicted, by hand): the same attempt again
        step.create.append(export_pod(job, settings, attempt, pending, join_inference=serving))
        step.condition = Cond.unknown("Exporting", f"creating pod {name}: " + _describe(records))
        return step
    if current.deleting:  # recreated once it is gone
        step.condition = Cond.unknown("Exporting", f"pod {name} is terminating; it will be recreated")
        return step
    if not current.finished:
        if current.problem_reason:  # e.g. a missing Secret key, an image pull error, no node
            step.condition = Cond.unknown(current.problem_reason, f"pod {name}: {current.problem_message}")
        else:
            step.condition = Cond.unknown("Exporting", f"pod {name} is {current.phase.lower()}: " + _describe(records))
        return step

    report = ExportReport.parse(current.exit_message)
    for i in pending:
        records[i] = _recorded(report, i, now) or {
            **records[i],
            "error": f"{current.describe_exit()} (no report of this destination)",
        }
    status = {**old, "destinations": records}
    if all(_done(r) for r in records):
        step.status, step.busy = {**status, "phase": "Exported"}, False
        step.condition = Cond.true("Exported", _describe(records))
        return step
    failures = int(old.get("failures") or 0) + 1
    errors = "; ".join(f"{r['destination']}: {r['error']}" for r in records if r.get("error"))
    limit = export.backoff_limit
    if failures <= limit:
        retry = export_pod_name(job, attempt + 1)
        step.failures.append(f"pod {name}: {errors}; retry {failures} of {limit} as pod {retry}")
        step.status = {**status, "phase": "Exporting", "attempt": attempt + 1, "failures": failures, "pod": retry}
        step.delete_pods.append(name)
        still = [i for i, r in enumerate(records) if not _done(r)]
        step.create.append(export_pod(job, settings, attempt + 1, still, join_inference=serving))
        step.condition = Cond.unknown("Exporting", f"retry {failures} of {limit} as pod {retry}: " + _describe(records))
        return step
    step.failures.append(f"pod {name}: {errors}; backoffLimit {limit} reached")
    step.status, step.busy = {**status, "phase": "Failed", "failures": failures}, False
    step.condition = _settled("Failed", records)
    return step


def _settled(phase: Any, records: Sequence[Mapping[str, Any]]) -> Cond:
    if phase == "Exported":
        return Cond.true("Exported", _describe(records))
    return Cond.false(
        "ExportFailed", _describe(records) + " (the job's result is unchanged; change spec.export to retry)"
    )
