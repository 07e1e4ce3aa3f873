"""``grpo export --to ...``: a destination written as a URL-like word, as one ``spec.export`` destination.

    claim:NAME[/PATH]          a folder on a claim of the job's namespace (a local run: --volume NAME=DIR)
    hf://OWNER/REPO[@BRANCH]   a Hugging Face-compatible hub repository (--token-secret NAME[:KEY])
    s3://BUCKET[/PREFIX]       an S3-compatible bucket (--credentials-secret NAME)

The destination is validated by the same model the API server's schema comes from, so a
mistake is named before anything is patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import ValidationError

from grpo_operator.api.job import format_errors
from grpo_operator.api.spec import ExportDestination
from grpo_operator.client.errors import JobRejected


@dataclass(frozen=True)
class ExportOptions:
    to: str
    merged: bool = False
    token_secret: Optional[str] = None  # NAME[:KEY] of the hub token
    credentials_secret: Optional[str] = None  # the S3 credentials' Secret
    endpoint: Optional[str] = None  # a self-hosted hub's or an S3-compatible service's URL
    region: Optional[str] = None
    path_style: bool = False


def _secret_key(text: str) -> dict[str, str]:
    name, _, key = text.partition(":")
    return {"name": name, **({"key": key} if key else {})}


def destination(options: ExportOptions) -> dict[str, Any]:
    """The ``spec.export.destinations`` entry (manifest form); raises JobRejected naming what is wrong."""
    to = options.to
    entry: dict[str, Any]
    if to.startswith("claim:"):
        name, _, path = to.removeprefix("claim:").partition("/")
        entry = {"claim": {"claimName": name, **({"path": path} if path else {})}}
    elif to.startswith("hf://"):
        repo, _, revision = to.removeprefix("hf://").partition("@")
        if not options.token_secret:
            raise JobRejected("--to hf://...: the hub token comes from a Secret; pass --token-secret NAME[:KEY]")
        hub: dict[str, Any] = {"repoId": repo, "tokenSecretRef": _secret_key(options.token_secret)}
        if revision:
            hub["revision"] = revision
        if options.endpoint:
            hub["endpoint"] = options.endpoint
        entry = {"hub": hub}
    elif to.startswith("s3://"):
        bucket, _, prefix = to.removeprefix("s3://").partition("/")
        if not options.credentials_secret:
            raise JobRejected("--to s3://...: the credentials come from a Secret; pass --credentials-secret NAME")
        s3: dict[str, Any] = {"bucket": bucket, "credentialsSecretRef": {"name": options.credentials_secret}}
        if prefix:
            s3["prefix"] = prefix
        if options.endpoint:
            s3["endpointUrl"] = options.endpoint
        if options.region:
            s3["region"] = options.region
        if options.path_style:
            s3["addressingStyle"] = "path"
        entry = {"s3": s3}
    else:
        raise JobRejected(f"--to {to!r}: write claim:NAME[/PATH], hf://OWNER/REPO[@BRANCH] or s3://BUCKET[/PREFIX]")
    if options.merged:
        entry["merged"] = True
    try:
        ExportDestination.model_validate(entry)
    except ValidationError as exc:
        problems = [f"--to {to}: {line}" for line in format_errors(exc)]
        raise JobRejected("\n  ".join(problems), problems) from None
    return entry


def with_destination(export: Optional[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any]:
    """``spec.export`` with ``entry`` added (a destination already there is not added twice)."""
    current = dict(export or {})
    destinations = list(current.get("destinations") or [])
    if entry not in destinations:
        destinations.append(entry)
    current["destinations"] = destinations
    return current
