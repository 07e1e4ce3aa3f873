"""What both of a job's pods share: security, writable scratch space, volumes,
co-location, scheduling options and Kueue admission.

Pods follow Pod Security "restricted": non-root (uid 1000), no privilege
escalation, all capabilities dropped, seccomp RuntimeDefault, and a read-only
root filesystem. vLLM, torch, Triton and the Hugging Face libraries write caches
under $HOME and /tmp, so those are emptyDirs; the model download cache lives on
the job's volume so a restarted pod does not download again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from grpo_operator.api.spec import PodOptions, VolumeSource
from grpo_operator.children.meta import (
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    INFERENCE,
    JOB_LABEL,
    TRAINER,
    Job,
    object_meta,
    pvc_name,
)
from grpo_operator.resolve import DATA_MOUNT, MODEL_MOUNT, RUN_MOUNT

RUN_AS_USER = 1000
HOME = "/home/grpo"
GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"
POD_GROUP_SIZE = 2  # trainer + vLLM

# Environment that points every cache at writable places.
CACHE_ENV: dict[str, str] = {
    "HOME": HOME,
    "XDG_CACHE_HOME": f"{HOME}/.cache",
    "XDG_CONFIG_HOME": f"{HOME}/.config",
    "TMPDIR": "/tmp",
    "HF_HOME": f"{RUN_MOUNT}/.cache/huggingface",
    "TRITON_CACHE_DIR": f"{HOME}/.cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{HOME}/.cache/torchinductor",
    "NUMBA_CACHE_DIR": f"{HOME}/.cache/numba",
    "VLLM_CACHE_ROOT": f"{HOME}/.cache/vllm",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class Mount:
    """One volume and where a container sees it."""

    volume: dict[str, Any]
    path: str
    read_only: bool = False
    sub_path: Optional[str] = None

    def volume_mount(self) -> dict[str, Any]:
        vm: dict[str, Any] = {"name": self.volume["name"], "mountPath": self.path}
        if self.read_only:
            vm["readOnly"] = True
        if self.sub_path:
            vm["subPath"] = self.sub_path
        return vm


def scratch_mounts() -> list[Mount]:
    """The run volume plus writable emptyDirs for /tmp, $HOME and shared memory (NCCL, vLLM)."""
    return [
        Mount({"name": "tmp", "emptyDir": {}}, "/tmp"),
        Mount({"name": "home", "emptyDir": {}}, HOME),
        Mount({"name": "shm", "emptyDir": {"medium": "Memory"}}, "/dev/shm"),
    ]


def run_mount(job: Job) -> Mount:
    return Mount({"name": "run", "persistentVolumeClaim": {"claimName": pvc_name(job)}}, RUN_MOUNT)


def user_volume_mount(source: VolumeSource, root: str) -> Mount:
    """A read-only user claim at ``<root>/<claim>`` (the path resolve.mounted assumes)."""
    name = f"claim-{source.claim_name}"[:63].rstrip("-.")
    volume = {"name": name, "persistentVolumeClaim": {"claimName": source.claim_name, "readOnly": True}}
    return Mount(volume, f"{root}/{source.claim_name}", read_only=True, sub_path=source.sub_path)


def model_mounts(job: Job) -> list[Mount]:
    volume = job.spec.model.volume
    return [user_volume_mount(volume, MODEL_MOUNT)] if volume is not None else []


def data_mounts(job: Job) -> list[Mount]:
    mounts: list[Mount] = []
    for source in (job.spec.data.train, job.spec.data.validation):
        if source is not None and source.file is not None and source.file.volume is not None:
            mounts.append(user_volume_mount(source.file.volume, DATA_MOUNT))
    return mounts


def volumes(mounts: list[Mount]) -> list[dict[str, Any]]:
    """Each volume once, even when mounted at several paths."""
    seen: dict[str, dict[str, Any]] = {}
    for m in mounts:
        seen.setdefault(m.volume["name"], m.volume)
    return list(seen.values())


def volume_mounts(mounts: list[Mount]) -> list[dict[str, Any]]:
    unique: dict[str, dict[str, Any]] = {}
    for m in mounts:
        unique.setdefault(m.path, m.volume_mount())
    return list(unique.values())


def resources(options: PodOptions, gpus: int) -> dict[str, Any]:
    """The user's CPU/memory plus the GPU count from trainKwargs (extended resources go in limits)."""
    requests = {k: str(v) for k, v in options.resources.requests.items()}
    limits = {k: str(v) for k, v in options.resources.limits.items()}
    if gpus > 0:
        limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def env_list(*sources: dict[str, str]) -> list[dict[str, Any]]:
    """Later sources override earlier ones; order kept stable for readable manifests."""
    merged: dict[str, str] = {}
    for source in sources:
        merged.update(source)
    return [{"name": k, "value": v} for k, v in merged.items()]


def co_location(job: Job) -> Optional[dict[str, Any]]:
    """Required pod affinity putting trainer and vLLM on one node (ReadWriteOnce volumes).

    Both pods carry the same term, and both match it, so whichever is scheduled
    first may go anywhere (the scheduler's self-affinity rule) and the other
    follows it.
    """
    if job.spec.storage.access_mode != "ReadWriteOnce":
        return None
    term = {
        "labelSelector": {
            "matchLabels": {JOB_LABEL: job.name},
            "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In", "values": [TRAINER, INFERENCE]}],
        },
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def tolerations(options: PodOptions) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in options.tolerations]


def pod(
    job: Job,
    *,
    name: str,
    component: str,
    attempt: int,
    options: PodOptions,
    container: dict[str, Any],
    mounts: list[Mount],
    restart_policy: str,
    termination_grace_seconds: int,
) -> dict[str, Any]:
    """A job pod around one container, with everything the two pods share."""
    meta = object_meta(job, name, component)
    meta["labels"] = {**options.labels, **meta["labels"], ATTEMPT_LABEL: str(attempt)}
    annotations = dict(options.annotations)
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": termination_grace_seconds,
        "automountServiceAccountToken": False,  # the job's pods get no API access
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [
            {**container, "securityContext": container_security_context(), "volumeMounts": volume_mounts(mounts)}
        ],
        "volumes": volumes(mounts),
    }
    affinity = co_location(job)
    if affinity:
        spec["affinity"] = affinity
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        spec["tolerations"] = tolerations(options)
    if options.priority_class_name:
        spec["priorityClassName"] = options.priority_class_name
    if job.spec.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = job.spec.queue_name
        meta["labels"][KUEUE_GROUP_LABEL] = job.name
        annotations[KUEUE_GROUP_COUNT_ANNOTATION] = str(POD_GROUP_SIZE)
        spec["schedulingGates"] = [{"name": KUEUE_ADMISSION_GATE}]
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
