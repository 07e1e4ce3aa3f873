"""What sleeping idle OpenMP threads buy a local CPU run.  bash bench/run.sh cpu_sharing [--steps N]

grpo-local runs the trainer and the vLLM CPU server on the same cores. libgomp's idle threads spin by
default, taking the cores the other process computes on, and sleeping ones wake up later. This runs the
embedded default for a few steps in both modes, once with each policy forced in both processes
(bench/_omp_local.py), and compares wall time and the last step's phases: what grpo_operator.resolve
decides from (``OMP_WAIT_POLICY=PASSIVE`` for an overlapped local CPU run only). The validation scores
must be equal: the policy changes no arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from _results import header, write_section
from learning import learning_run

RUNNER = str(Path(__file__).with_name("_omp_local.py"))
PHASES = ("rollout", "forward_backward", "step")


def last_step(summary: dict[str, Any]) -> dict[str, float]:
    """The last step's phases in seconds, as the run's progress document reports them."""
    timings = json.loads((Path(summary["run_dir"]) / "progress.json").read_text())["timings"]
    return {p: timings[p] for p in PHASES if timings.get(p) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    os.environ.pop("OMP_WAIT_POLICY", None)  # each run's processes get only what their runner gives them
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-sharing-") as tmp:
        for overlap in (True, False):
            for label in ("spinning", "passive"):
                summary = learning_run(args.steps, overlap, 0, Path(tmp), runner=(RUNNER, label), label=f"-{label}")
                rows.append((overlap, label, summary, last_step(summary)))  # read before the folder goes
    lines = [
        f"The embedded default, {args.steps} steps, seed 0; the libgomp default (idle threads spin) against "
        "`OMP_WAIT_POLICY=PASSIVE`, forced in both processes. Phases: the last step's, in seconds (overlapped: "
        "the rollout runs beside the update). grpo-local sets PASSIVE for overlapped CPU runs only.",
        "",
        "| mode | OpenMP idle threads | wall s | rollout s | forward/backward s | step s | final val |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for overlap, label, s, phases in rows:
        cells = " | ".join(f"{phases[p]:.1f}" if p in phases else "-" for p in PHASES)
        lines.append(
            f"| {'overlapped' if overlap else 'sequential'} | {label} | {s['bench_wall_seconds']:.0f} | {cells} | "
            f"{s['final_val_score']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        title = "## CPU sharing: idle OpenMP threads in a local CPU run"
        write_section("cpu_sharing", f"{title}\n\n{header('cpu_sharing')}\n{table}")


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
