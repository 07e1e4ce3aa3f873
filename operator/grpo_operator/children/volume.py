"""The job's shared volume (adapters, checkpoints, logs and the model cache), and a pool's (its jobs' runs)."""

from __future__ import annotations

from typing import Any, Optional

from grpo_operator.children.meta import STORAGE, Job, Owner, object_meta, pvc_name


def persistent_volume_claim(job: Owner) -> Optional[dict[str, Any]]:
    """The PVC to create, or None when the job (the pool) names an existing claim, or the job is on a pool."""
    storage = job.spec.storage
    if storage.existing_claim or (isinstance(job, Job) and job.pool is not None):
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name is not None:  # "": no class (a volume provisioned by hand), as in Kubernetes
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(job, pvc_name(job), STORAGE),
        "spec": spec,
    }


def user_claims(job: Job) -> list[str]:
    """Claims the job reads but does not own (model, data files, code, existing run volume), in spec order."""
    spec = job.spec
    names: list[str] = []
    if spec.storage.existing_claim:
        names.append(spec.storage.existing_claim)
    if spec.model.volume is not None:
        names.append(spec.model.volume.claim_name)
    for source in (spec.data.train, spec.data.validation):
        if source is not None and source.file is not None and source.file.volume is not None:
            names.append(source.file.volume.claim_name)
    names.extend(c.volume.claim_name for c in spec.code if c.volume is not None)
    return list(dict.fromkeys(names))


def user_config_maps(job: Job) -> list[tuple[str, str]]:
    """(ConfigMap, what the job uses it for) the trainer pod mounts and cannot start without, each once."""
    uses: dict[str, str] = {}
    for i, c in enumerate(job.spec.code):
        if c.config_map is not None:
            uses.setdefault(c.config_map.name, f"spec.code[{i}]")
    for split in ("train", "validation"):
        source = getattr(job.spec.data, split)
        if source is not None and source.config_map is not None:
            uses.setdefault(source.config_map.name, f"spec.data.{split}")
    return list(uses.items())
