"""Atomic, durable publication of files and directories on the shared volume.

Readers of the volume (vLLM loading ``adapters/step-N``, a resumed trainer looking
for the newest checkpoint, the local runner polling ``progress.json``) must never
see a half-written file or directory under its final name. Everything is written
under a hidden staging name in the same directory (so ``os.rename`` stays on one
filesystem), flushed to disk, then renamed into place.

Durability errors are errors: a file whose ``fsync`` fails (EIO, ENOSPC, EDQUOT on a
network filesystem) is not published, and the caller gets the ``OSError``. Directories
are flushed too, but a filesystem that cannot open or sync a directory at all (EINVAL,
ENOTSUP, EACCES, EISDIR) is not an error: the data is written, only the entry's
durability is the filesystem's own. An I/O error while syncing one is.

Replacing a directory takes two renames (POSIX cannot rename a directory over a
non-empty one). :func:`staged_dir` makes the new content durable under a ``.ready-``
name first, then moves the old one to ``.trash-`` and the new one into place, so a
crash at any point leaves either the old or the new directory findable:
:func:`remove_leftovers` (which every single writer runs before it writes) puts a
``.ready-`` or ``.trash-`` directory back under its name when that name is missing,
and :func:`find_published` lets a reader that must not write find it meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"  # being written: never complete, always deleted by recovery
READY_PREFIX = ".ready-"  # complete and durable, about to replace its name
TRASH_PREFIX = ".trash-"  # the replaced version, about to be deleted
_SUFFIX_CHARS = 33  # "-" + uuid4().hex
# errno of a directory the filesystem will not open or sync: nothing is lost by skipping it
_DIR_SYNC_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EBADF}
)


def fsync_file(path: Path) -> None:
    """Flush one file's data to stable storage; raises OSError (EIO, ENOSPC, EDQUOT, ...)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries; a filesystem that refuses to open or sync directories is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in _DIR_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` so a crash right after the rename keeps the content."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


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
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _side_name(prefix: str, final: Path) -> Path:
    return final.parent / f"{prefix}{final.name}-{uuid.uuid4().hex}"


def _published_name(entry: str, prefix: str) -> Optional[str]:
    """The final name a ``<prefix><name>-<uuid>`` entry stands for (None for any other entry)."""
    if not entry.startswith(prefix) or len(entry) <= len(prefix) + _SUFFIX_CHARS:
        return None
    return entry[len(prefix) : -_SUFFIX_CHARS]


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``final`` when the block succeeds.

    An existing ``final`` is replaced. Steps: the staging directory is written and
    flushed, renamed to ``.ready-`` (durable: from here recovery publishes it), the old
    ``final`` is renamed to ``.trash-``, ``.ready-`` to ``final``, and the trash is
    deleted. On an exception (a failed write or fsync included) the staging directory
    is removed, ``final`` is untouched and the exception propagates.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = _side_name(STAGING_PREFIX, final)
    staging.mkdir()
    ready = _side_name(READY_PREFIX, final)
    try:
        yield staging
        fsync_tree(staging)
        os.rename(staging, ready)
        fsync_dir(parent)
        _swap_in(ready, final)
    finally:
        for leftover in (staging, ready):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(ready: Path, final: Path) -> None:
    """``ready`` under ``final``'s name, the old ``final`` (if any) moved aside first and deleted after."""
    trash: Path | None = None
    if final.exists():
        trash = _side_name(TRASH_PREFIX, final)
        os.rename(final, trash)
        log.info("replacing existing %s", final)
    try:
        os.rename(ready, final)
    except OSError:
        if trash is not None:
            os.rename(trash, final)  # the old one stands again
        raise
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def find_published(final: Path) -> Optional[Path]:
    """Where ``final``'s content is: itself, or the ``.ready-``/``.trash-`` directory a crash between
    :func:`staged_dir`'s renames left (the new version first); None when there is none. For readers
    that must not write (recovery is the writer's)."""
    if final.exists():
        return final
    if not final.parent.is_dir():
        return None
    for prefix in (READY_PREFIX, TRASH_PREFIX):
        for entry in sorted(final.parent.iterdir()):
            if _published_name(entry.name, prefix) == final.name:
                return entry
    return None


def remove_leftovers(parent: Path) -> list[Path]:
    """Finish or undo what a killed writer left in ``parent``: a ``.ready-`` (new, complete) or else a
    ``.trash-`` (old) directory goes back under its name when that name is missing; every other staging,
    ready and trash entry is deleted. Only the single writer may call this. Returns what was deleted."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    entries = sorted(parent.iterdir())
    for prefix in (READY_PREFIX, TRASH_PREFIX):
        for entry in entries:
            name = _published_name(entry.name, prefix)
            if name is not None and entry.exists() and not (parent / name).exists():
                os.rename(entry, parent / name)
                fsync_dir(parent)
                log.warning("recovered %s from %s (a writer stopped between two renames)", parent / name, entry.name)
    for entry in parent.iterdir():
        if entry.name.startswith((STAGING_PREFIX, READY_PREFIX, TRASH_PREFIX)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d leftover staging entries in %s", len(removed), parent)
    return removed
