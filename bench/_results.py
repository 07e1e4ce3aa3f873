"""Shared by the benchmarks: percentiles, the machine's description, and each
benchmark's own section of bench/RESULTS.md (other sections are left as they are)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank: a value that was measured; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> str:
    """`nproc` cores and total RAM, e.g. ``2 cores, 23.4 GiB RAM``."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {mem_kib / 2**20:.1f} GiB RAM"


def command(name: str) -> str:
    """The command that reproduces this run."""
    return " ".join(["bash bench/run.sh", name, *map(shlex.quote, sys.argv[1:])])


def header(name: str) -> str:
    """Command, date and machine: the lines every section starts with."""
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Command: `{command(name)}`  \nDate: {today}  \nMachine: {machine()}\n"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def logs_dir(given: Optional[Path], name: str) -> Path:
    """Where a benchmark keeps its component logs: ``given`` (``--logs``), or a new temporary folder; printed."""
    logs = given or Path(tempfile.mkdtemp(prefix=f"{name.replace('_', '-')}-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs: {logs}", file=sys.stderr)
    return logs
