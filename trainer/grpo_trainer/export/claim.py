"""A claim destination: the folder is replaced as a whole (staged beside it, then renamed), so a reader
sees the previous export or this one, never a half copy."""

from __future__ import annotations

import shutil
from pathlib import Path

from grpo_trainer.export.layout import Files
from grpo_trainer.run.atomic import staged_dir


def copy_to_claim(files: Files, dest: Path) -> None:
    with staged_dir(dest) as staging:
        for rel, path in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
