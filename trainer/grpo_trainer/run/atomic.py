"""Atomic publication of files and directories on the shared volume.

Readers of the volume (vLLM loading ``adapters/step-N``, a resumed trainer looking
for the newest checkpoint, the local runner polling ``progress.json``) must never
see a half-written file or directory under its final name. Everything is written
under a hidden staging name in the same directory (so ``os.rename`` stays on one
filesystem), flushed to disk, then renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some filesystems refuse to open directories; the data is still written
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` so a crash right after the rename keeps the content."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (readers see the old or the new file, never a mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{STAGING_PREFIX}{path.name}-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_path(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``final`` when the block succeeds.

    An existing ``final`` is replaced (moved aside first, then deleted), so a name is
    either absent for an instant or complete, never partial. On an exception the
    staging directory is removed and ``final`` is untouched.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
        fsync_tree(staging)
        trash: Path | None = None
        if final.exists():
            trash = parent / f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex}"
            os.rename(final, trash)
            log.info("replacing existing %s", final)
        os.rename(staging, final)
        _fsync_path(parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_leftovers(parent: Path) -> list[Path]:
    """Delete staging and trash entries a killed process left in ``parent``; only the single writer may call this."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d leftover staging entries in %s", len(removed), parent)
    return removed
