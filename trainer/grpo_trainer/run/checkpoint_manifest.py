"""Which checkpoint directories are whole: ``COMPLETE`` and the manifest in it.

``<run_dir>/checkpoints/step-N/COMPLETE`` is written last and lists every other file of
the checkpoint with its size and SHA-256. A checkpoint is resumed from only when it is
complete (the marker is there) and still matches its manifest: a file lost, cut short
or changed on the volume (a write the disk acknowledged and then lost, a bad copy)
makes it unverifiable, and the resume falls back to the previous one.

Standard library only: the local runner reads it too (to say which step a run resumes
from) without loading torch. Checkpoints written before the manifest existed (a
``COMPLETE`` without ``files``) count as verified when their ``state.json`` is there.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Optional

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_HASH_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_complete(directory: Path, step: int) -> dict[str, Any]:
    """Write ``COMPLETE`` with the manifest of every file already in ``directory`` (call it last)."""
    files = {
        str(path.relative_to(directory)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }
    marker = {"step": step, "saved_at": time.time(), "files": files}
    (directory / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True), encoding="utf-8")
    return marker


def problem(directory: Path) -> Optional[str]:
    """Why ``directory`` cannot be resumed from (incomplete, unreadable, a file missing or changed); None if it can."""
    marker_file = directory / COMPLETE_MARKER
    if not marker_file.is_file():
        return f"no {COMPLETE_MARKER} marker (the write did not finish)"
    try:
        marker = json.loads(marker_file.read_text(encoding="utf-8"))
        files: Optional[dict[str, dict[str, Any]]] = marker.get("files")
    except (OSError, ValueError, AttributeError) as exc:
        return f"unreadable {COMPLETE_MARKER}: {exc}"
    if files is None:  # written before manifests: as verifiable as it ever was
        return None if (directory / STATE_FILE).is_file() else f"no {STATE_FILE}"
    for name, expected in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError as exc:
            return f"{name} is missing ({exc.strerror or exc})"
        if size != expected["size"]:
            return f"{name} has {size} bytes, the manifest says {expected['size']}"
        try:
            digest = _sha256(path)
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or exc})"
        if digest != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (changed or corrupted on the volume)"
    return None


def step_dirs(root: Path) -> dict[int, Path]:
    """Every ``step-N`` directory under ``root`` by step, complete or not."""
    found: dict[int, Path] = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir():
                found[int(match.group(1))] = entry
    return found


def complete_steps(root: Path) -> list[int]:
    """Steps whose checkpoint has its ``COMPLETE`` marker (not yet verified), oldest first."""
    return sorted(step for step, path in step_dirs(root).items() if (path / COMPLETE_MARKER).is_file())


def newest_verified(root: Path) -> Optional[int]:
    """The newest step whose checkpoint is complete and matches its manifest; None when there is none."""
    for step in reversed(complete_steps(root)):
        if problem(root / f"step-{step}") is None:
            return step
    return None
