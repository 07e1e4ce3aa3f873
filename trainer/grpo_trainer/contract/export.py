"""The export contract: what an export process is told to do, and what it reports back.

A succeeded job's ``spec.export`` becomes an :class:`ExportPlan` (grpo_operator.resolve decides
it, for a pod or a local run); the export program (grpo_trainer.export) carries it out and
writes an :class:`ExportReport` as its last word: to stdout, and to the termination message
the operator reads into ``status.export``. Neither holds a credential: only the names of the
environment variables that do.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

EXPORT_MODULE = "grpo_trainer.export.main"
MERGED_DIR = "merged"  # an export's folder of the base model with the adapter merged in
REPORT_BYTES = 4096  # what a pod's termination message keeps
ERROR_CHARS = 400  # of one destination's error, so every destination fits the report


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClaimTarget(_Contract):
    """A folder on a claim (or a local directory standing in for one), replaced as a whole."""

    kind: Literal["claim"] = "claim"
    dir: str = Field(description="The destination folder as the export process sees it.")
    shown: str = Field(description="How the user names it: claimName:/path.")


class HubTarget(_Contract):
    """A model repository on a Hugging Face-compatible hub."""

    kind: Literal["hub"] = "hub"
    repo_id: str
    endpoint: Optional[str] = Field(None, description="A self-hosted hub's URL; None: huggingface.co.")
    revision: Optional[str] = Field(None, description="The branch to commit to (created if missing); None: main.")
    private: bool = True
    token_env: str = Field(description="The variable holding the write token.")


class S3Target(_Contract):
    """A prefix of an S3-compatible bucket."""

    kind: Literal["s3"] = "s3"
    bucket: str
    prefix: str = Field(description="Key prefix, without a trailing slash ('' for the bucket's root).")
    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    access_key_id_env: str
    secret_access_key_env: str


Destination = Annotated[Union[ClaimTarget, HubTarget, S3Target], Field(discriminator="kind")]


class ExportTarget(_Contract):
    """One destination of an export, as the job names it."""

    index: int = Field(description="Its place in spec.export.destinations.")
    name: str = Field(description="How messages name it: claim models:/topics, hub org/repo, s3://bucket/prefix.")
    spec_hash: str = Field(description="Hash of the destination's spec (with merged): what was exported.")
    merged: bool = Field(description="Also write the base model with the adapter merged (merged/).")
    to: Destination


class ExportPlan(_Contract):
    """Everything an export process needs: where the result is, the base model, the destinations."""

    job: str
    result_dir: str = Field(description="The run's result/ folder, as the export process sees it.")
    base_model: str = Field(description="Hub id (read from the hub cache only) or directory of the base model.")
    targets: list[ExportTarget] = Field(min_length=1)

    def to_json(self) -> str:
        return self.model_dump_json()


class Exported(_Contract):
    """What became of one destination."""

    index: int
    name: str
    spec_hash: str
    merged: bool
    location: Optional[str] = Field(
        None, description="Where it went: claim:/path, org/repo@commit, s3://bucket/prefix."
    )
    error: Optional[str] = None
    exported_at: Optional[datetime] = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ExportReport(_Contract):
    """The export's last word: one entry per destination of its plan."""

    job: str
    step: Optional[int] = Field(None, description="The step of the exported result (0: the base model).")
    adapter: bool = Field(False, description="The result had an adapter (else the base model scored best).")
    destinations: list[Exported]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.destinations)

    def termination_message(self) -> str:
        """The report in a pod's 4 KiB termination message: errors are cut until it fits."""
        doc = self.model_dump(mode="json")
        limit = ERROR_CHARS
        while True:
            text = json.dumps(doc, separators=(",", ":"))
            if len(text.encode()) <= REPORT_BYTES or limit < 16:
                return text
            for d in doc["destinations"]:
                if d["error"] and len(d["error"]) > limit:
                    d["error"] = d["error"][: limit - 3] + "..."
            limit //= 2

    @classmethod
    def parse(cls, text: str) -> Optional[ExportReport]:
        """A termination message read back (None: not a report, e.g. a log tail of a crash)."""
        if not text.startswith("{"):
            return None
        try:
            return cls.model_validate_json(text)
        except ValueError:
            return None


def short_error(text: str) -> str:
    """One destination's error as the report keeps it."""
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
