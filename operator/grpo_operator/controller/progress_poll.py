"""Reading the trainer's progress over HTTP and turning it into status fields.

The trainer serves a JSON document at ``GET /progress``; it gets no write access
to the API, the operator copies what it reports into ``GRPOJob.status``. Reading
is best-effort: an unreachable trainer (starting, restarting, a network policy)
leaves the last known progress in place and never fails a reconcile.

The document is grpo_trainer.contract.progress.Progress; which of its values become
which status fields is that module's STATUS_FIELDS table, read here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from grpo_operator.controller.conditions import rfc3339
from grpo_trainer.contract.progress import CODE_SUMMARY_CHARS, NAME_CHARS, NAME_LIST_ITEMS, STATUS_FIELDS

log = logging.getLogger(__name__)

STATUS_STRING_CHARS = CODE_SUMMARY_CHARS  # the longest string status field (spec.code's summary)
PROGRESS_PATH = "/progress"
PROGRESS_MAX_BYTES = 1 << 20  # the document is a few KB; a reply past 1 MiB is not one
PROGRESS_DEADLINE_FACTOR = 2.0  # the whole reply within twice the per-read timeout
CHUNK_BYTES = 64 << 10
JSON_SAFE_INT = 2**53  # status integers the API server and every JSON client keep exact

def progress_url(host: str, port: int) -> str:
    return f"http://{host}:{port}{PROGRESS_PATH}"


class _Refused(ValueError):
    """A reply that is not a progress document by its size or its pace."""


def _read_bounded(resp: Any, deadline: float) -> bytes:
    """The body, refused past PROGRESS_MAX_BYTES or past ``deadline`` (a reply trickling in byte by byte)."""
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > PROGRESS_MAX_BYTES:
        raise _Refused(f"reply of {declared} bytes (at most {PROGRESS_MAX_BYTES})")
    body = bytearray()
    while chunk := resp.read1(CHUNK_BYTES):
        body += chunk
        if len(body) > PROGRESS_MAX_BYTES:
            raise _Refused(f"reply over {PROGRESS_MAX_BYTES} bytes")
        if time.monotonic() > deadline:
            raise _Refused(f"reply still arriving after the {PROGRESS_DEADLINE_FACTOR:g}x timeout")
    return bytes(body)


def fetch_progress(url: str, timeout: float) -> Optional[dict[str, Any]]:
    """The trainer's progress document, or None when it cannot be read (logged, not raised).

    The trainer runs the user's code, so its reply is untrusted: its size is capped and the
    whole read bounded in time, so no reply can exhaust the operator's memory or hold one of
    its reconcile workers.
    """
    deadline = time.monotonic() + PROGRESS_DEADLINE_FACTOR * timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(_read_bounded(resp, deadline).decode("utf-8"))
    except _Refused as exc:
        log.warning("progress from %s refused: %s", url, exc)
        return None
    except (urllib.error.URLError, OSError, ValueError, RecursionError) as exc:
        log.debug("progress from %s not available: %s", url, exc)
        return None
    if not isinstance(doc, dict):
        log.warning("progress from %s is not a JSON object; ignored", url)
        return None
    return doc


def _time(value: Any) -> Optional[str]:
    if isinstance(value, str):
        try:
            return rfc3339(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _coerce(value: Any, kind: type) -> Any:
    """The value as ``kind``, or None when it is not one (negative counts and non-finite numbers included).

    A model kind becomes an object with camelCase keys, as the status schema has it; a list kind
    a list of names within the status schema's bounds (None when empty).
    """
    if value is None or isinstance(value, bool):
        return None
    if kind is list:
        if not isinstance(value, list):
            return None
        names = [v[:NAME_CHARS] for v in value if isinstance(v, str)][:NAME_LIST_ITEMS]
        return names or None
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        try:
            model = kind.model_validate(value)
        except (ValidationError, RecursionError):
            return None
        dumped = model.model_dump(mode="json", exclude_none=True)
        fields = {name: v if isinstance(v, bool) else _coerce(v, type(v)) for name, v in dumped.items()}
        return {to_camel(k): v for k, v in fields.items() if v is not None} or None
    try:
        if kind is int:
            number = int(value)
            return number if 0 <= number <= JSON_SAFE_INT else None
        if kind is float:
            real = float(value)
            return real if math.isfinite(real) else None
        return str(value)[:STATUS_STRING_CHARS]  # what the status schema accepts, whatever the trainer sent
    except (TypeError, ValueError, OverflowError):
        return None


def progress_status(doc: Mapping[str, Any], fetched_at: datetime) -> dict[str, Any]:
    """Status fields (camelCase) from a progress document; missing or malformed values are skipped."""
    out: dict[str, Any] = {}
    for name, field in STATUS_FIELDS.items():
        value = _coerce(doc.get(field.source), field.kind)
        if value is not None:
            out[to_camel(name)] = value
    step, max_steps = out.get("step"), _coerce(doc.get("max_steps"), int)
    if step is not None and max_steps:
        out["progressPercentage"] = max(0, min(100, int(100 * step / max_steps)))
    out["lastProgressTime"] = _time(doc.get("updated_at")) or rfc3339(fetched_at)
    return out
