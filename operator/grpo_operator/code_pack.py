"""``grpo-pack-code DIR --name NAME``: a directory of Python code as a ConfigMap for ``spec.code``.

The directory's files go into one gzipped tar (key ``code.tar.gz`` of ``binaryData``);
the trainer unpacks it and puts its root on the import path, so ``DIR/mypkg/programs.py``
imports as ``mypkg.programs``. The archive is deterministic (sorted, no times or
owners): the same tree gives the same hash, which the run records. The API server
keeps at most 1 MiB per object; a tree that does not fit is refused with the
alternatives instead of failing at ``kubectl apply``.

    grpo-pack-code ./src --name my-code | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from grpo_operator.resolve import CODE_ARCHIVE_KEY

# What a code tree never needs on the cluster.
DEFAULT_EXCLUDES = (
    "__pycache__",
    "*.pyc",
    ".git",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ipynb_checkpoints",
)
OBJECT_LIMIT = 1024 * 1024  # bytes: the API server's (etcd's) limit for one object
MANIFEST_MARGIN = 4096  # metadata and YAML around the data
SHA_ANNOTATION = "grpo.dev/code-sha256"
SOURCE_ANNOTATION = "grpo.dev/packed-from"
CODE_LABEL = "grpo.dev/code"


class PackError(ValueError):
    """The tree cannot be packed into one ConfigMap; the message says what to do instead."""


def _excluded(relative: Path, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(part, p) for part in relative.parts for p in patterns)


def pack(directory: Path, excludes: Sequence[str] = DEFAULT_EXCLUDES) -> bytes:
    """The tree under ``directory`` as a reproducible .tar.gz (paths relative to it)."""
    if not directory.is_dir():
        raise PackError(f"{directory} is not a directory")
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and not _excluded(p.relative_to(directory), excludes)
    )
    if not files:
        raise PackError(f"{directory} has no files to pack")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(str(path.relative_to(directory)))
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    # gzip with mtime 0: the bytes depend on the tree only
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def config_map(
    name: str, directory: Path, *, namespace: Optional[str] = None, excludes: Sequence[str] = DEFAULT_EXCLUDES
) -> dict[str, Any]:
    """The ConfigMap manifest holding ``directory``'s code; raises PackError when it exceeds 1 MiB."""
    archive = pack(directory, excludes)
    encoded = base64.b64encode(archive).decode("ascii")
    size = len(encoded) + MANIFEST_MARGIN
    if size > OBJECT_LIMIT:
        raise PackError(
            f"{directory} packs to {len(archive) // 1024} KiB ({size // 1024} KiB as a ConfigMap); one object holds "
            f"at most {OBJECT_LIMIT // 1024} KiB. Exclude what the trainer does not import (--exclude PATTERN), or "
            "put the code on a volume (spec.code[].volume) or in the trainer image."
        )
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {CODE_LABEL: "packed"},
        "annotations": {
            SHA_ANNOTATION: hashlib.sha256(archive).hexdigest(),
            SOURCE_ANNOTATION: str(directory.resolve()),
        },
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "binaryData": {CODE_ARCHIVE_KEY: encoded}}


def archive_of(manifest: dict[str, Any]) -> bytes:
    """The packed tree of a code ConfigMap manifest (what a local run reads instead of the mounted key)."""
    data = (manifest.get("binaryData") or {}).get(CODE_ARCHIVE_KEY)
    if not isinstance(data, str):
        name = (manifest.get("metadata") or {}).get("name")
        raise PackError(f"ConfigMap {name!r} has no binaryData key {CODE_ARCHIVE_KEY!r}: pack it with grpo-pack-code")
    return base64.b64decode(data)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo-pack-code", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("directory", type=Path, help="the folder whose contents go on the import path")
    parser.add_argument("--name", required=True, help="the ConfigMap's name (spec.code[].configMap.name)")
    parser.add_argument("--namespace", help="the job's namespace (default: kubectl's)")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="file or folder names to leave out; repeatable",
    )
    parser.add_argument("-o", "--output", type=Path, help="write the manifest here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        manifest = config_map(
            args.name, args.directory, namespace=args.namespace, excludes=(*DEFAULT_EXCLUDES, *args.exclude)
        )
    except PackError as exc:
        sys.stderr.write(f"grpo-pack-code: {exc}\n")
        return 2
    text = "---\n" + yaml.safe_dump(manifest, sort_keys=False)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
