"""The GPU check's CPU smoke (bench/gpu_check.py --device cpu) runs and passes, so the check cannot rot.

The same script runs on a GPU machine at Qwen2.5-1.5B's shape; here it runs a tiny
Qwen2 in fp32 through every check: the trainer's update against TRL's loss and
gradient, the launcher's process group, the adapter's save and reload. A check that
fails makes the script exit 1, and so this test fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "RESULTS.md"
CHECKS = (
    "| logprobs ours vs TRL",
    "| loss ours vs TRL",
    "| gradient cosine ours vs TRL",
    "| gradient norm ours vs TRL",
    "| launcher --nproc 1: gloo group",
    "| adapter saved (AdapterStore.save) and reloaded",
)
FIGURES = ("| trained tokens / s", "| sequence tokens / s", "| MFU", "| peak GPU memory")


def test_gpu_check_cpu_smoke_passes_and_writes_nothing() -> None:
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    rank_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GRPO_SYSTEM_PYTHON", "GRPO_WHEELS")
    env = {k: v for k, v in os.environ.items() if k not in rank_vars}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "run.sh"), "gpu_check", "--device", "cpu", "--no-write"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-6000:]}\n{proc.stderr[-6000:]}"
    lines = out.splitlines()
    for check in CHECKS:
        row = next((ln for ln in lines if ln.startswith(check)), None)
        assert row is not None, f"no table row {check!r}\n{out}"
        assert row.split("|")[2].strip() == "ok", row
    for figure in FIGURES:
        assert any(ln.startswith(figure) for ln in lines), f"no figure {figure!r}\n{out}"
    assert "gpu_check: all checks passed" in lines
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before, "the CPU smoke must not write RESULTS.md"
