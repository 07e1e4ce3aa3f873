"""The job's secret values (API keys and tokens in its environment), kept out of what the run writes.

A model that echoes a key, or an error that quotes one (an HTTP 401 with the request's headers),
must not carry it onto the volume, into /progress, the pod's termination message or the job's
Events, which people and tools with less access than the Secret read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from grpo_trainer.contract.config import JUDGE_API_KEY_ENV, UNTRUSTED_API_KEY_ENV, VLLM_API_KEY_ENV

# Environment variables whose values never reach a log file, /progress or an Event.
SECRET_ENVS = (
    UNTRUSTED_API_KEY_ENV,
    JUDGE_API_KEY_ENV,
    VLLM_API_KEY_ENV,
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "HF_TOKEN",
)
REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter values would redact ordinary words


@dataclass(frozen=True)
class Redactor:
    """Replaces each secret value in a text by REDACTED."""

    values: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, names: Iterable[str] = SECRET_ENVS, environ: Mapping[str, str] = os.environ) -> Redactor:
        return cls(tuple(v for v in (environ.get(name, "") for name in names) if len(v) >= MIN_SECRET_LENGTH))

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text
