"""The Python API: a DSPy optimizer whose ``compile()`` trains the program's local model as a GRPOJob.

    from grpo_operator.client import GRPO, ClusterBackend

    compiler = GRPO(metric=my_metric, num_train_steps=200, train_kwargs={...},
                    backend=ClusterBackend(namespace="team-a"))
    optimized = compiler.compile(student=program, trainset=trainset, valset=devset)

The ``grpo`` command line (:mod:`.cli`) follows, stops and exports the same jobs.
Importing this package loads neither DSPy nor the Kubernetes client; ``compile()`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grpo_operator.client.errors import BundleError, GRPOError, JobFailed, JobRejected, NotServed

if TYPE_CHECKING:
    from grpo_operator.client.cluster_backend import ClusterBackend
    from grpo_operator.client.loading import load
    from grpo_operator.client.local_backend import LocalBackend
    from grpo_operator.client.optimizer import GRPO

_LAZY = {
    "GRPO": "grpo_operator.client.optimizer",
    "LocalBackend": "grpo_operator.client.local_backend",
    "ClusterBackend": "grpo_operator.client.cluster_backend",
    "load": "grpo_operator.client.loading",
}

__all__ = [
    "GRPO",
    "LocalBackend",
    "ClusterBackend",
    "load",
    "GRPOError",
    "BundleError",
    "JobRejected",
    "JobFailed",
    "NotServed",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
