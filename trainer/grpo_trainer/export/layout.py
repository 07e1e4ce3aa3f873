"""What an export writes where: pure planning, no I/O beyond listing the result's files.

Every destination receives the files of result/ under their own relative paths (``adapter/...``,
``program.json``, ``result.json``, ``README.md``) and, when it asks for it, ``merged/...``. The
order matters where a destination has no atomic rename (a bucket, a hub commit's upload): the
result's summary, result.json, goes last, so a reader who sees it sees everything before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from grpo_trainer.contract.export import ClaimTarget, ExportTarget, HubTarget, S3Target
from grpo_trainer.contract.progress import RESULT_FILE

Files = dict[str, Path]  # relative path in the destination -> the file here


def files_under(root: Path, into: str = "") -> Files:
    """Every file under ``root`` by its path relative to it (prefixed with ``into/``), in a stable order."""
    out: Files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        out[f"{into}/{rel}" if into else rel] = path
    return out


def destination_files(result: Files, merged: Optional[Files], target: ExportTarget) -> Files:
    """What ``target`` receives, its summary last."""
    files = dict(result)
    if target.merged and merged is not None:
        files.update(merged)
    summary = files.pop(RESULT_FILE, None)
    if summary is not None:
        files[RESULT_FILE] = summary
    return files


def s3_key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def s3_keys(prefix: str, files: Mapping[str, Path]) -> dict[str, Path]:
    """Object key -> file, in upload order."""
    return {s3_key(prefix, rel): path for rel, path in files.items()}


def location(target: ExportTarget, commit: Optional[str] = None) -> str:
    """Where a destination's export went, as status.export shows it."""
    to = target.to
    if isinstance(to, ClaimTarget):
        return to.shown
    if isinstance(to, HubTarget):
        return f"{to.repo_id}@{commit}" if commit else to.repo_id
    assert isinstance(to, S3Target)
    return f"s3://{to.bucket}/{to.prefix}" if to.prefix else f"s3://{to.bucket}"


def commit_message(job: str, step: Optional[int], merged: bool) -> str:
    what = f"step {step}" if step else "the base model (no adapter scored better)"
    return f"{job}: GRPO result, {what}" + (", merged" if merged else "")


def needs_merge(targets: list[ExportTarget]) -> bool:
    return any(t.merged for t in targets)
