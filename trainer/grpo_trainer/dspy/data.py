"""Data sets: a :class:`DataSpec` (hub, file or URL) to ``dspy.Example`` objects.

A field mapping (program field -> column) renames columns to the program's
fields; the built-in PAPILLON program maps PUPA's columns by default
(``pii_str`` <- ``pii_units``). Errors name the data set, the missing columns
and the columns that do exist, since a wrong mapping is the usual mistake.
Files and URLs accept the hub's split-slice syntax (``train[:225]``,
``train[10%:]``) in ``split``, so a local copy of PUPA splits as the tutorial does.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

import dspy

from grpo_trainer.contract.config import DataSpec

logger = logging.getLogger(__name__)

# Program field -> PUPA column (Columbia-NLP/PUPA, config pupa_new), as in the tutorial.
PUPA_FIELDS: dict[str, str] = {
    "user_query": "user_query",
    "target_response": "target_response",
    "pii_str": "pii_units",
}
FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SLICE = re.compile(r"^(?P<name>[^\[\]]*)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


class DataError(ValueError):
    """A data set could not be read or does not fit the program."""


class DataUnavailable(DataError):
    """A remote data set could not be fetched for now (network, a 5xx or 429): a retry may succeed."""


def describe(spec: DataSpec) -> str:
    if spec.source == "hub":
        return f"hub dataset {spec.id}" + (f" ({spec.config})" if spec.config else "") + f" split {spec.split}"
    if spec.source == "file":
        return f"file {spec.path}"
    return f"URL {spec.url}"


def default_cache_dir() -> Path:
    base = os.environ.get("GRPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "grpo-operator")
    return Path(base) / "data"


# --------------------------------------------------------------------------- reading rows


def detect_format(name: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = Path(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise DataError(f"cannot tell the format of {name!r} from its extension; set format to one of {', '.join(FORMATS)}")


def read_file(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or Parquet file."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")


def download(url: str, cache_dir: Path, *, timeout: float = 120.0) -> Path:
    """The file at ``url`` in ``cache_dir`` (downloaded once; written atomically)."""
    import httpx

    name = Path(urlparse(url).path).name or "data"
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                transient = response.status_code >= 500 or response.status_code == 429
                raise (DataUnavailable if transient else DataError)(
                    f"download of {url} failed: HTTP {response.status_code}"
                )
            for chunk in response.iter_bytes():
                out.write(chunk)
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise DataUnavailable(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("downloaded data", extra={"url": url, "path": str(target)})
    return target


def _bound(value: Optional[str], n: int) -> Optional[int]:
    if value is None:
        return None
    if value.endswith("%"):
        return round(n * int(value[:-1]) / 100)
    return int(value)


def apply_split(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Slice rows by the hub's syntax (``train``, ``train[:225]``, ``train[225:450]``, ``train[:10%]``).

    A file holds one split, so the name before the brackets is not checked.
    """
    match = _SLICE.match(split.strip())
    if match is None:
        raise DataError(f"split {split!r} is not of the form name, name[a:b] or name[a%:b%]")
    if "[" not in split:
        return rows
    n = len(rows)
    return rows[_bound(match["start"], n) : _bound(match["stop"], n)]


def load_rows(spec: DataSpec, *, cache_dir: Optional[Path] = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a data set (split and limit applied) and its column names."""
    if spec.source == "hub":
        rows, columns = _hub_rows(spec)
    elif spec.source == "file":
        if not spec.path:
            raise DataError("a file data set needs a path")
        path = Path(spec.path)
        rows = apply_split(read_file(path, detect_format(path.name, spec.format)), spec.split)
        columns = _columns(rows)
    else:
        if not spec.url:
            raise DataError("a URL data set needs a url")
        fmt = detect_format(urlparse(spec.url).path, spec.format)
        path = download(spec.url, cache_dir or default_cache_dir())
        rows = apply_split(read_file(path, fmt), spec.split)
        columns = _columns(rows)
    if spec.limit is not None:
        rows = rows[: spec.limit]
    return rows, columns


def _hub_rows(spec: DataSpec) -> tuple[list[dict[str, Any]], list[str]]:
    """The hub path (datasets.load_dataset); needs network or a warm HF cache."""
    import datasets

    if not spec.id:
        raise DataError("a hub data set needs an id")
    try:
        ds = datasets.load_dataset(spec.id, spec.config, split=spec.split, revision=spec.revision)
    except (ConnectionError, TimeoutError) as exc:  # the hub is unreachable or slow: retried, not the job's fault
        raise DataUnavailable(f"cannot load {describe(spec)}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise DataError(f"cannot load {describe(spec)}: {type(exc).__name__}: {exc}") from exc
    return ds.to_list(), list(ds.column_names)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


# --------------------------------------------------------------------------- examples


def field_mapping(
    spec: DataSpec, default_fields: Optional[Mapping[str, str]], columns: Sequence[str]
) -> dict[str, str]:
    """program field -> column: the program's defaults overridden by the spec; no mapping at all: every column as is."""
    mapping = {**(default_fields or {}), **spec.fields}
    return mapping or {c: c for c in columns}


def load_examples(
    spec: DataSpec,
    *,
    default_fields: Optional[Mapping[str, str]] = None,
    default_inputs: Optional[Sequence[str]] = None,
    cache_dir: Optional[Path] = None,
) -> list[dspy.Example]:
    """``dspy.Example`` objects with the program's field names, inputs marked (``with_inputs``)."""
    rows, columns = load_rows(spec, cache_dir=cache_dir)
    if not rows:
        raise DataError(f"{describe(spec)} has no rows")
    mapping = field_mapping(spec, default_fields, columns)
    missing = {f: c for f, c in mapping.items() if c not in columns}
    if missing:
        wanted = ", ".join(f"{c!r} (for field {f!r})" for f, c in missing.items())
        raise DataError(
            f"{describe(spec)} has no column {wanted}; available columns: {', '.join(columns)}. "
            "Map program fields to columns with data.<split>.fields: {field: column}."
        )
    inputs = list(spec.input_fields or default_inputs or [])
    if not inputs:
        raise DataError(f"{describe(spec)}: no input fields known for this program; set input_fields")
    unknown = [f for f in inputs if f not in mapping]
    if unknown:
        raise DataError(f"input field(s) {', '.join(unknown)} are not among the mapped fields {', '.join(mapping)}")
    examples = []
    for i, row in enumerate(rows):
        absent = [c for c in mapping.values() if c not in row]
        if absent:
            raise DataError(f"{describe(spec)}: row {i} has no value for column(s) {', '.join(absent)}")
        examples.append(dspy.Example(**{f: row[c] for f, c in mapping.items()}).with_inputs(*inputs))
    logger.info("loaded data", extra={"source": describe(spec), "examples": len(examples)})
    return examples
