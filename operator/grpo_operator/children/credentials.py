"""The job's vLLM key: a Secret generated per job that both pods read (secretKeyRef), and so does a
client of the served result. A pool has one of its own, read by its servers and its jobs' trainers.

The key is made by the reconciler (it is random: an input of the pure decision, like the clock)
and never read back: the operator needs only ``create`` on Secrets for it.
"""

from __future__ import annotations

from typing import Any

from grpo_operator.children.meta import CREDENTIALS, Owner, api_key_secret_name, object_meta
from grpo_operator.resolve import API_KEY_SECRET_KEY


def api_key_secret(job: Owner, key: str) -> dict[str, Any]:
    """The Secret holding ``key``; immutable: the key never changes under the job's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(job, api_key_secret_name(job), CREDENTIALS),
        "type": "Opaque",
        "immutable": True,
        "stringData": {API_KEY_SECRET_KEY: key},
    }


def api_key_ref(job: Owner) -> dict[str, str]:
    """Where the key is: ``status.endpoint.apiKeySecretRef``."""
    return key_ref(api_key_secret_name(job))


def key_ref(secret: str) -> dict[str, str]:
    """The key in the Secret ``secret`` (a job's own, or its pool's), as a status names it."""
    return {"name": secret, "key": API_KEY_SECRET_KEY}
