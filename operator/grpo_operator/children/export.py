"""The export pod: a short run of the trainer image that copies a succeeded job's result/ to
spec.export's destinations (grpo_trainer.export), rendering the job's export resolution.

The job's volume is mounted read-only, claim destinations writable at /export/<claim>, the
destinations' credentials come from Secret keys into this container only, and its report
lands in the termination message, which the operator reads into status.export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from grpo_operator.children.config import cluster_target
from grpo_operator.children.meta import EXPORT, Job, export_pod_name
from grpo_operator.children.podspec import (
    Mount,
    beside_inference,
    beside_pool,
    co_located,
    env_list,
    model_mounts,
    pod,
    run_mount,
    scratch_mounts,
)
from grpo_operator.resolve import (
    EXPORT_MOUNT,
    TERMINATION_LOG,
    ResolvedExport,
    export_pod_options,
    export_pod_plan,
    resolve_export,
)
from grpo_operator.settings import OperatorSettings


def resolved_export(job: Job, settings: OperatorSettings, destinations: Sequence[int]) -> ResolvedExport:
    """The export of ``destinations`` (indices into spec.export.destinations) as the job's pods see things."""
    return resolve_export(job.name, job.spec, cluster_target(job, settings), destinations)


def export_claim_mount(claim: str) -> Mount:
    """A claim destination, writable, where grpo_operator.resolve points the export."""
    volume = {"name": f"export-{claim}"[:63].rstrip("-."), "persistentVolumeClaim": {"claimName": claim}}
    return Mount(volume, f"{EXPORT_MOUNT}/{claim}")


def export_pod(
    job: Job, settings: OperatorSettings, attempt: int, destinations: Sequence[int], *, join_inference: bool
) -> dict[str, Any]:
    """Export pod ``<job>-export-<attempt>`` for the destinations not exported yet.

    ``join_inference``: the serving vLLM pod holds the job's ReadWriteOnce volume, so this pod
    must run on its node (the lifecycle knows whether it serves). A job on a pool: its run is on the
    pool's volume, which the pool's server holds (ReadWriteOnce: this pod goes to the server's node).
    """
    export = resolved_export(job, settings, destinations)
    options = export_pod_options(job.spec)
    plan = export_pod_plan(job.spec, export)
    container: dict[str, Any] = {
        "name": "export",
        "image": options.image or settings.trainer_image,
        "command": export.argv,
        "env": env_list(plan.env, refs=export.env_refs),
        # the export's report (what went where) is the operator's source for status.export
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": plan.resources,
    }
    pull = options.image_pull_policy or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    job_volume = run_mount(job, export.run_sub_path)
    mounts = [
        Mount(job_volume.volume, job_volume.path, read_only=True, sub_path=job_volume.sub_path),  # reads result/, hub cache
        *model_mounts(job),
        *(export_claim_mount(claim) for claim in export.claims),
        *scratch_mounts(plan),
    ]
    return pod(
        job,
        name=export_pod_name(job, attempt),
        component=EXPORT,
        attempt=attempt,
        options=options,
        plan=plan,
        container=container,
        mounts=mounts,
        restart_policy="Never",  # the operator counts failures against spec.export.backoffLimit
        termination_grace_seconds=30,
        affinity=_export_affinity(job, join_inference),
        pod_group=False,  # small, CPU only, after the job: not part of the pair Kueue admits
    )


def _export_affinity(job: Job, join_inference: bool) -> Optional[dict[str, Any]]:
    """Where the export pod must run to mount the job's volume: beside the pool's server or the job's serving
    vLLM pod when that holds a ReadWriteOnce volume; anywhere otherwise."""
    if job.pool is not None:
        return beside_pool(job)
    return beside_inference(job) if join_inference and co_located(job) else None
