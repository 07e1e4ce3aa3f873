"""Publication on the shared volume (grpo_trainer.run.atomic): durable or not at all, and findable after a crash.

fsync failures come from the narrow seam in tests/support/fsync_faults.py (os.fsync
raising for matching paths: a disk losing acknowledged writes cannot be made here
without root-only block devices); the crash between a replace's two renames is a real
``os._exit`` of a child process at that point.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_trainer.run import atomic
from grpo_trainer.run.atomic import find_published, remove_leftovers, staged_dir, write_text_atomic
from support.checkout import checkout_env
from support.fsync_faults import failing_fsync


def publish(final: Path, text: str) -> None:
    with staged_dir(final) as staging:
        (staging / "data.txt").write_text(text)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT])
def test_a_file_whose_fsync_fails_is_not_published(tmp_path: Path, code: int) -> None:
    final = tmp_path / "step-1"
    publish(final, "old")
    with failing_fsync(r"/\.staging-step-1-[0-9a-f]+/data\.txt$", code), pytest.raises(OSError) as raised:
        publish(final, "new")
    assert raised.value.errno == code
    assert (final / "data.txt").read_text() == "old"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # nothing half-written left beside it

    with failing_fsync(r"/\.staging-progress\.json-", code), pytest.raises(OSError):
        write_text_atomic(tmp_path / "progress.json", "{}")
    assert not (tmp_path / "progress.json").exists() and [p.name for p in tmp_path.iterdir()] == ["step-1"]


def test_a_directory_that_cannot_be_synced_is_no_error_but_an_io_error_on_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some filesystems refuse to open or fsync a directory (EINVAL, EACCES): the data is written all the same."""
    real_open, real_fsync = os.open, os.fsync

    def refuse_directories(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECTORY:
            raise OSError(errno.EACCES, "directories cannot be opened here")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_directories)
    publish(tmp_path / "a", "x")
    monkeypatch.setattr(os, "open", real_open)

    def directory_fsync(code: int):  # type: ignore[no-untyped-def]
        def fsync(fd: int) -> None:
            if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(code, os.strerror(code))
            real_fsync(fd)

        return fsync

    monkeypatch.setattr(os, "fsync", directory_fsync(errno.EINVAL))
    publish(tmp_path / "b", "x")
    assert (tmp_path / "a" / "data.txt").read_text() == (tmp_path / "b" / "data.txt").read_text() == "x"
    monkeypatch.setattr(os, "fsync", directory_fsync(errno.EIO))
    with pytest.raises(OSError) as raised:
        publish(tmp_path / "c", "x")
    assert raised.value.errno == errno.EIO


CRASH = """
import os, sys
from pathlib import Path
from grpo_trainer.run.atomic import READY_PREFIX, staged_dir
final, when = Path(sys.argv[1]), sys.argv[2]
real_rename = os.rename
def rename(src, dst):
    src, dst = Path(src), Path(dst)
    moving_old_aside = src == final
    moving_new_in = src.name.startswith(READY_PREFIX) and dst == final
    if (when == "before-old-moved" and moving_old_aside) or (when == "between-renames" and moving_new_in):
        os._exit(137)  # killed: no finally, no cleanup
    real_rename(src, dst)
os.rename = rename
with staged_dir(final) as staging:
    (staging / "data.txt").write_text("new")
"""


@pytest.mark.parametrize(("when", "found"), [("before-old-moved", "old"), ("between-renames", "new")])
def test_a_crash_during_a_replace_leaves_the_old_or_the_new_directory_findable(
    tmp_path: Path, when: str, found: str
) -> None:
    final = tmp_path / "step-3"
    publish(final, "old")
    done = subprocess.run([sys.executable, "-c", CRASH, str(final), when], env=checkout_env(), capture_output=True)
    assert done.returncode == 137, done.stderr.decode()
    if when == "between-renames":
        assert not final.exists()  # the old one moved aside, the new one not yet in place

    # a reader that must not write finds the content meanwhile
    published = find_published(final)
    assert published is not None and (published / "data.txt").read_text() == found
    # the writer's recovery puts it back under its name and clears the rest
    remove_leftovers(tmp_path)
    assert (final / "data.txt").read_text() == found
    assert [p.name for p in tmp_path.iterdir()] == ["step-3"]


def test_recovery_restores_a_replaced_directory_when_only_the_old_one_survived(tmp_path: Path) -> None:
    """A trash directory whose name is missing (the new one was lost): the old version comes back."""
    (tmp_path / f"{atomic.TRASH_PREFIX}result-{'0' * 32}").mkdir()
    (tmp_path / f"{atomic.STAGING_PREFIX}result-{'1' * 32}").mkdir()  # a write that never finished
    removed = remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["result"]
    assert [p.name for p in removed] == [f"{atomic.STAGING_PREFIX}result-{'1' * 32}"]
