"""The user's code on the import path: directories as they are, packed archives unpacked first.

A job's program and metric may live outside the trainer image (``spec.code``): a
directory (a volume, a git checkout, a pip ``--target`` dir, or a local folder) or a
``.tar.gz`` packed into a ConfigMap (grpo_operator.code_pack), or what an init container
fetched (git, pip; grpo_trainer.usercode.fetch). Each source is put on
``sys.path`` in the job's order (the first wins), and what was used is returned
as a :class:`CodeIdentity` so the run's files say which code trained it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from grpo_trainer.contract.config import CodeSource
from grpo_trainer.usercode.fetch import SOURCE_FILE

log = logging.getLogger(__name__)

CODE_IDENTITY_FILE = "code.json"  # in the run directory


class CodeError(Exception):
    """A code source is missing or unreadable (the job's fault: no retry helps)."""


@dataclass(frozen=True)
class CodeIdentity:
    """One source as it was used: enough to reproduce the run's code."""

    origin: str
    path: str  # where it was imported from
    sha256: Optional[str] = None  # of an archive
    git_commit: Optional[str] = None  # of a git source, or of a directory that is a git checkout
    pip_freeze: Optional[list[str]] = None  # of a pip source


def _git_commit(directory: Path) -> Optional[str]:
    if not (directory / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _fetch_record(folder: Path) -> dict[str, Any]:
    """What grpo_trainer.usercode.fetch recorded there; a source that was not fetched is a job error."""
    try:
        doc = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CodeError(f"{folder} holds no record of its fetch ({SOURCE_FILE}): {exc}") from None
    return doc if isinstance(doc, dict) else {}


def unpack(archive: Path, work_dir: Path) -> tuple[Path, str]:
    """``archive`` unpacked under ``work_dir`` in a folder named by its hash (reused when present)."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    target = work_dir / digest[:16]
    if not (target / ".complete").is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")  # no absolute paths, links out or devices
        (target / ".complete").touch()
    return target, digest


def install_code(sources: list[CodeSource], work_dir: Path) -> list[CodeIdentity]:
    """Put every source on ``sys.path`` (first source first); raises CodeError naming the source."""
    used: list[CodeIdentity] = []
    for source in sources:
        path = Path(source.path)
        if source.kind == "archive":
            if not path.is_file():
                raise CodeError(f"{source.origin}: packed code {path} is missing")
            try:
                directory, digest = unpack(path, work_dir)
            except (OSError, tarfile.TarError) as exc:
                raise CodeError(f"{source.origin}: cannot unpack {path}: {exc}") from exc
            used.append(CodeIdentity(source.origin, str(directory), sha256=digest))
        else:
            if not path.is_dir():
                raise CodeError(f"{source.origin}: code directory {path} does not exist")
            record = _fetch_record(Path(source.fetched)) if source.fetched else {}
            used.append(
                CodeIdentity(
                    source.origin,
                    str(path),
                    git_commit=record.get("git_commit") or _git_commit(path),
                    pip_freeze=record.get("pip_freeze"),
                )
            )
    for identity in reversed(used):
        if identity.path not in sys.path:
            sys.path.insert(0, identity.path)
    if used:
        log.info("code on the import path", extra={"code": [asdict(u) for u in used]})
    return used


def identity_json(used: list[CodeIdentity]) -> str:
    return json.dumps([asdict(u) for u in used], indent=1) + "\n"


def code_summary(used: list[CodeIdentity], limit: int) -> Optional[str]:
    """spec.code's sources in one line for the job's status (``kubectl get -o yaml``); None without any."""
    parts = []
    for u in used:
        if not u.origin.startswith("spec.code"):
            continue  # a local run's own folders (--code, the job file's folder)
        what = u.origin.removeprefix("spec.")
        if u.sha256:
            parts.append(f"{what} sha256:{u.sha256[:16]}")
        elif u.git_commit:
            parts.append(f"{what} @{u.git_commit[:12]}")
        elif u.pip_freeze:
            parts.append(f"{what} -> {' '.join(u.pip_freeze)}")
        else:
            parts.append(what)
    text = "; ".join(parts)
    return (text if len(text) <= limit else text[: limit - 3] + "...") or None
