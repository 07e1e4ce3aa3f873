"""bench/RESULTS.md: one section per benchmark, each rewritten in place by its own run.

Shared by every benchmark so they record the same provenance (command, date,
machine) and never touch each other's sections.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """A one-line description of where the figures were measured."""
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} CPUs, {mem_kib / 2**20:.0f} GiB RAM, no GPU"


def write_section(name: str, title: str, command: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``body`` under a provenance header."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"{begin}\n## {title}\n\n`{command}` — {stamp}, {machine()}\n\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
