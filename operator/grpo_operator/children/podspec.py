"""What both of a job's pods share: security, writable scratch space, volumes,
environment, probes, co-location, scheduling options and Kueue admission.

Pods follow Pod Security "restricted": non-root (uid 1000), no privilege
escalation, all capabilities dropped, seccomp RuntimeDefault, and a read-only
root filesystem. $HOME and /tmp are emptyDirs; where each cache lives, the
resources and the probes are decided by grpo_operator.resolve (a PodPlan) and
only rendered here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from grpo_operator.api.names import DNS_LABEL_MAX, KUEUE_PREFIX, OPERATOR_PREFIX
from grpo_operator.api.spec import EnvFromSource, PodOptions, VolumeSource
from grpo_operator.children.meta import (
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    INFERENCE,
    JOB_LABEL,
    POOL_LABEL,
    TRAINER,
    Job,
    Owner,
    object_meta,
    pvc_name,
)
from grpo_operator.resolve import (
    CODE_MOUNT,
    DATA_MOUNT,
    HOME,
    MODEL_MOUNT,
    RUN_MOUNT,
    EnvRef,
    Health,
    PodPlan,
    config_map_data_dir,
)

RUN_AS_USER = 1000
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"

KUEUE_QUEUE_LABEL = f"{KUEUE_PREFIX}queue-name"
KUEUE_GROUP_LABEL = f"{KUEUE_PREFIX}pod-group-name"
KUEUE_GROUP_COUNT_ANNOTATION = f"{KUEUE_PREFIX}pod-group-total-count"
KUEUE_ADMISSION_GATE = f"{KUEUE_PREFIX}admission"
POD_GROUP_SIZE = 2  # trainer + vLLM


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


def scratch_mounts(plan: PodPlan) -> list[Mount]:
    """Writable emptyDirs for /tmp, $HOME and shared memory (NCCL, vLLM; the runtime's default is 64Mi).

    /dev/shm is memory-backed, so what it holds counts in the pod's memory; its
    sizeLimit keeps a runaway writer from growing it up to the whole limit.
    """
    mounts = [Mount({"name": "tmp", "emptyDir": {}}, "/tmp"), Mount({"name": "home", "emptyDir": {}}, HOME)]
    if plan.shm_size is not None:
        mounts.append(Mount({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.shm_size}}, "/dev/shm"))
    return mounts


def run_mount(job: Owner, sub_path: Optional[str]) -> Mount:
    """The job's claim at RUN_MOUNT: its run directory's folder (ResolvedJob.run_sub_path), or its root
    (a pool's servers: every attached job's run directory)."""
    return Mount({"name": "run", "persistentVolumeClaim": {"claimName": pvc_name(job)}}, RUN_MOUNT, sub_path=sub_path)


def volume_name(kind: str, name: str) -> str:
    """The pod's volume for an object the job names (a claim, a ConfigMap): ``<kind>-<name>`` when that is an
    RFC 1123 label, else with a hash of the name in place of what a label cannot hold (dots, length), so two
    objects never share a volume."""
    plain = f"{kind}-{name}"
    if len(plain) <= DNS_LABEL_MAX and "." not in plain:
        return plain
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    stem = name.replace(".", "-")[: DNS_LABEL_MAX - len(kind) - len(digest) - 2].rstrip("-")
    return f"{kind}-{stem}-{digest}"


def user_volume_mount(source: VolumeSource, root: str) -> Mount:
    """A read-only user claim at ``<root>/<claim>`` (the path resolve.mounted assumes)."""
    name = volume_name("claim", source.claim_name)
    volume = {"name": name, "persistentVolumeClaim": {"claimName": source.claim_name, "readOnly": True}}
    return Mount(volume, f"{root}/{source.claim_name}", read_only=True, sub_path=source.sub_path)


def model_mounts(job: Owner) -> list[Mount]:
    volume = job.spec.model.volume
    return [user_volume_mount(volume, MODEL_MOUNT)] if volume is not None else []


def data_mounts(job: Job) -> list[Mount]:
    """Data on claims at /datasets/<claim>, data in ConfigMaps at /datasets/configmap-<name>."""
    mounts: list[Mount] = []
    for source in (job.spec.data.train, job.spec.data.validation):
        if source is not None and source.file is not None and source.file.volume is not None:
            mounts.append(user_volume_mount(source.file.volume, DATA_MOUNT))
        if source is not None and source.config_map is not None:
            name = source.config_map.name
            volume = {"name": volume_name("data", name), "configMap": {"name": name}}
            mounts.append(Mount(volume, config_map_data_dir(name), read_only=True))
    return mounts


def code_mounts(job: Job, *, writable: Optional[int] = None) -> list[Mount]:
    """spec.code[i] at /code/<i>, where grpo_operator.resolve.code_sources points the trainer: read-only,
    except source ``writable``'s for the init container that fetches it (git and pip fill an emptyDir)."""
    mounts: list[Mount] = []
    for i, source in enumerate(job.spec.code):
        if writable is not None and i != writable:
            continue
        path = f"{CODE_MOUNT}/{i}"
        if source.config_map is not None:
            volume: dict[str, Any] = {"name": f"code-{i}", "configMap": {"name": source.config_map.name}}
            mounts.append(Mount(volume, path, read_only=True))
        elif source.volume is not None:
            claim = {"claimName": source.volume.claim_name, "readOnly": True}
            volume = {"name": f"code-{i}", "persistentVolumeClaim": claim}
            mounts.append(Mount(volume, path, read_only=True, sub_path=source.volume.sub_path))
        else:
            mounts.append(Mount({"name": f"code-{i}", "emptyDir": {}}, path, read_only=writable is None))
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


def env_list(*sources: dict[str, str], refs: tuple[EnvRef, ...] = ()) -> list[dict[str, Any]]:
    """Literal values (later sources override earlier ones, order kept stable) then Secret/ConfigMap keys."""
    merged: dict[str, str] = {}
    for source in sources:
        merged.update(source)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in merged.items()]
    for ref in refs:
        selector: dict[str, Any] = {"name": ref.source, "key": ref.key}
        if ref.optional:
            selector["optional"] = True
        kind = "secretKeyRef" if ref.kind == "secret" else "configMapKeyRef"
        env.append({"name": ref.name, "valueFrom": {kind: selector}})
    return env


def env_from(sources: tuple[EnvFromSource, ...]) -> list[dict[str, Any]]:
    return [s.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for s in sources]


def probes(health: Optional[Health], port: str) -> dict[str, Any]:
    """startupProbe, livenessProbe (and readinessProbe) on GET ``health.path``; none without a server."""
    if health is None:
        return {}
    get = {"path": health.path, "port": port}
    out: dict[str, Any] = {
        # Liveness and readiness wait for this: a slow model download is not a hang.
        "startupProbe": {
            "httpGet": get,
            "periodSeconds": health.period_seconds,
            "timeoutSeconds": health.timeout_seconds,
            "failureThreshold": health.startup_failures,
        },
        "livenessProbe": {
            "httpGet": get,
            "periodSeconds": health.period_seconds,
            "timeoutSeconds": health.timeout_seconds,
            "failureThreshold": health.liveness_failures,
        },
    }
    if health.readiness:
        out["readinessProbe"] = {
            "httpGet": get,
            "periodSeconds": health.readiness_period_seconds,
            "timeoutSeconds": health.readiness_timeout_seconds,
            "failureThreshold": health.readiness_failures,
        }
    return out


# A pod's spec as the operator rendered it, hashed: the lifecycle compares it with what the job renders now
# (spec.trainer and spec.inference may change; a running pod keeps what it started with).
SPEC_HASH_ANNOTATION = f"{OPERATOR_PREFIX}pod-spec-hash"


def spec_hash(pod_spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(pod_spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def co_located(job: Job) -> bool:
    """Trainer and vLLM must share a node: both mount the job's ReadWriteOnce volume. (A job on a pool has
    no vLLM pod of its own: see co_location.)"""
    return job.pool is None and job.spec.storage.access_mode == "ReadWriteOnce"


def beside_pool(job: Job) -> Optional[dict[str, Any]]:
    """Required pod affinity putting the trainer of a job on a pool on the pool's node, when the pool's
    claim (which holds the job's run directory) is ReadWriteOnce."""
    if job.pool is None or job.pool.access_mode != "ReadWriteOnce":
        return None
    term = {
        "labelSelector": {"matchLabels": {POOL_LABEL: job.pool.name, COMPONENT_LABEL: INFERENCE}},
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def co_location(job: Job) -> Optional[dict[str, Any]]:
    """Required pod affinity putting trainer and vLLM on one node (ReadWriteOnce volumes).

    Both pods carry the same term, and both match it, so whichever is scheduled
    first may go anywhere (the scheduler's self-affinity rule) and the other
    follows it. Nodes the lifecycle re-placed the pods away from are excluded by
    a required node affinity.
    """
    if job.pool is not None:
        return beside_pool(job)
    if not co_located(job):
        return None
    term = {
        "labelSelector": {
            "matchLabels": {JOB_LABEL: job.name},
            "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In", "values": [TRAINER, INFERENCE]}],
        },
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    affinity: dict[str, Any] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    if job.avoid_nodes:
        # by node name (what spec.nodeName holds; the hostname label may differ on some clouds)
        field = {"key": "metadata.name", "operator": "NotIn", "values": list(job.avoid_nodes)}
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [field]}]}
        }
    return affinity


def beside_inference(job: Job) -> Optional[dict[str, Any]]:
    """Required pod affinity putting a pod on the node of the job's vLLM pod: an export pod reading a
    ReadWriteOnce volume that the serving vLLM pod holds. (Without a vLLM pod to join, no affinity.)"""
    term = {
        "labelSelector": {"matchLabels": {JOB_LABEL: job.name, COMPONENT_LABEL: INFERENCE}},
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def tolerations(options: PodOptions) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in options.tolerations]


def pod(
    job: Owner,
    *,
    name: str,
    component: str,
    attempt: int,
    options: PodOptions,
    plan: PodPlan,
    container: dict[str, Any],
    mounts: list[Mount],
    restart_policy: str,
    termination_grace_seconds: int,
    affinity: Optional[dict[str, Any]],
    pod_group: bool,
    init_containers: tuple[tuple[dict[str, Any], list[Mount]], ...] = (),
) -> dict[str, Any]:
    """A job's (a pool's) pod around one container (after its init containers, each with its mounts), with
    everything the operator's pods share. ``pod_group``: one of a job's trainer and vLLM pair Kueue admits
    together."""
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
        "volumes": volumes([*mounts, *(m for _, init_mounts in init_containers for m in init_mounts)]),
    }
    if init_containers:
        spec["initContainers"] = [
            {**c, "securityContext": container_security_context(), "volumeMounts": volume_mounts(m)}
            for c, m in init_containers
        ]
    if plan.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in plan.image_pull_secrets]
    if affinity:
        spec["affinity"] = affinity
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        spec["tolerations"] = tolerations(options)
    if options.priority_class_name:
        spec["priorityClassName"] = options.priority_class_name
    if pod_group and isinstance(job, Job) and job.spec.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = job.spec.queue_name
        meta["labels"][KUEUE_GROUP_LABEL] = job.name
        annotations[KUEUE_GROUP_COUNT_ANNOTATION] = str(POD_GROUP_SIZE)
        spec["schedulingGates"] = [{"name": KUEUE_ADMISSION_GATE}]
    annotations[SPEC_HASH_ANNOTATION] = spec_hash(spec)
    meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
