"""Reading the trainer's progress over HTTP and turning it into status fields.

The trainer serves a JSON document at ``GET /progress``; it gets no write access
to the API, the operator copies what it reports into ``GRPOJob.status``. Reading
is best-effort: an unreachable trainer (starting, restarting, a network policy)
leaves the last known progress in place and never fails a reconcile.

Keys are accepted in snake_case or camelCase, with a few synonyms, so the
trainer's document and this reader need not change in lockstep.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Optional

from pydantic.alias_generators import to_camel

from .status import rfc3339

log = logging.getLogger(__name__)

PROGRESS_PATH = "/progress"

# status field (camelCase) -> keys the trainer may use for it, first match wins.
_FIELDS: dict[str, tuple[str, ...]] = {
    "step": ("step", "current_step"),
    "maxSteps": ("max_steps", "num_train_steps", "total_steps"),
    "trainReward": ("train_reward", "reward_mean", "reward"),
    "trainRewardStd": ("train_reward_std", "reward_std"),
    "valScore": ("val_score", "validation_score"),
    "bestValScore": ("best_val_score",),
    "baselineValScore": ("baseline_val_score",),
    "adapterVersion": ("adapter_version", "adapter"),
    "bestAdapterVersion": ("best_adapter_version", "best_adapter"),
    "bestStep": ("best_step",),
    "estimatedRemainingSeconds": ("estimated_remaining_seconds", "eta_seconds"),
}
_INTS = {"step", "maxSteps", "bestStep", "estimatedRemainingSeconds"}
_FLOATS = {"trainReward", "trainRewardStd", "valScore", "bestValScore", "baselineValScore"}
_TIME_KEYS = ("updated_at", "last_update_time", "time", "timestamp")


def progress_url(host: str, port: int) -> str:
    return f"http://{host}:{port}{PROGRESS_PATH}"


def fetch_progress(url: str, timeout: float) -> Optional[dict[str, Any]]:
    """The trainer's progress document, or None when it cannot be read (logged, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.debug("progress from %s not available: %s", url, exc)
        return None
    if not isinstance(doc, dict):
        log.warning("progress from %s is not a JSON object; ignored", url)
        return None
    return doc


def _lookup(doc: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        for variant in (key, to_camel(key)):
            if variant in doc and doc[variant] is not None:
                return doc[variant]
    return None


def _time(value: Any) -> Optional[str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return rfc3339(datetime.fromtimestamp(float(value), tz=timezone.utc))
    if isinstance(value, str):
        try:
            return rfc3339(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def progress_status(doc: Mapping[str, Any], fetched_at: datetime) -> dict[str, Any]:
    """Status fields (camelCase) from a progress document; unknown or malformed values are skipped."""
    out: dict[str, Any] = {}
    for field, keys in _FIELDS.items():
        value = _lookup(doc, keys)
        if value is None:
            continue
        try:
            if field in _INTS:
                value = int(value)
                if value < 0:
                    continue
            elif field in _FLOATS:
                value = float(value)
                if not math.isfinite(value):
                    continue
            else:
                value = str(value)
        except (TypeError, ValueError):
            continue
        out[field] = value
    step, max_steps = out.get("step"), out.get("maxSteps")
    if step is not None and max_steps:
        out["progressPercentage"] = max(0, min(100, int(100 * step / max_steps)))
    out["lastProgressTime"] = _time(_lookup(doc, _TIME_KEYS)) or rfc3339(fetched_at)
    return out
