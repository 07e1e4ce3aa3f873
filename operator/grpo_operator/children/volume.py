"""The job's shared volume: adapters, checkpoints, logs and the model cache."""

from __future__ import annotations

from typing import Any, Optional

from grpo_operator.children.meta import STORAGE, Job, object_meta, pvc_name


def persistent_volume_claim(job: Job) -> Optional[dict[str, Any]]:
    """The PVC to create, or None when the job names an existing claim."""
    storage = job.spec.storage
    if storage.existing_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(job, pvc_name(job), STORAGE),
        "spec": spec,
    }


def user_claims(job: Job) -> list[str]:
    """Claims the job reads but does not own (model, data files, existing run volume), in spec order."""
    spec = job.spec
    names: list[str] = []
    if spec.storage.existing_claim:
        names.append(spec.storage.existing_claim)
    if spec.model.volume is not None:
        names.append(spec.model.volume.claim_name)
    for source in (spec.data.train, spec.data.validation):
        if source is not None and source.file is not None and source.file.volume is not None:
            names.append(source.file.volume.claim_name)
    return list(dict.fromkeys(names))
