"""Claims of the test cluster bound to folders of this machine: the models and data shares a job reads, and
where a provisioned claim keeps its files (read by the tests to check what a run left on its volume)."""

from __future__ import annotations

from pathlib import Path

import yaml
from controlplane import ControlPlane


def read_only_claim(cp: ControlPlane, ns: str, claim: str, host_dir: Path, mode: str = "ReadOnlyMany") -> None:
    """A claim bound to a pre-made volume holding ``host_dir`` (a models or data share; ``mode``
    ReadWriteMany: a share written to, such as an export's destination)."""
    pv = f"{ns}-{claim}"
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": [mode],
                "persistentVolumeReclaimPolicy": "Retain",  # never let a reclaimer touch the source
                "storageClassName": "",
                "hostPath": {"path": str(host_dir), "type": "Directory"},
                "claimRef": {"namespace": ns, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns},
            "spec": {
                "accessModes": [mode],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    cp.apply_yaml(yaml.safe_dump_all(docs))


def claim_dir(cp: ControlPlane, ns: str, claim: str) -> Path:
    pvc = cp.get_json("pvc", claim, namespace=ns)
    return Path(cp.get_json("pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"])
