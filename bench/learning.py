"""Does the embedded default learn, and by how much beyond noise?  bash bench/run.sh learning [--quick]

1. Noise: the validation score of one fixed model (the warm-started base, step 0)
   under several sampling seeds, through the vLLM server ``grpo-local`` would start
   -- the spread any gain must clear.
2. Learning: ``grpo-local`` on the embedded default, sequential (how it runs on a CPU) for a
   few training seeds and overlapped for one: baseline vs final validation score, the
   gain's spread across training seeds, and wall time.

Writes the ``learning`` section of bench/RESULTS.md and bench/learning.json, the one
figure tests/support/learning.py takes its margin from (the gain
tests/local/test_local_e2e.py and tests/local/test_compile.py assert).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from _results import header, write_section

from grpo_operator.local.default import default_job
from grpo_operator.local.plan import Plan, RunOptions, make_plan
from grpo_operator.local.rundir import write_config
from grpo_trainer.dspy.task import checked_task
from grpo_trainer.run.distributed import DistContext
from grpo_trainer.run.loop import GRPORun
from grpo_trainer.vllm.process import VLLMProcess
from support.learning import FIGURE_FILE, MARGIN_SDS, LearningFigure
from support.vllm import free_port


def local_plan(doc: dict[str, Any], work: Path, name: str) -> Plan:
    """What ``grpo-local`` would run for ``doc`` (the same translation, the same vLLM command)."""
    job = work / f"{name}.yaml"
    job.write_text(yaml.safe_dump(doc, sort_keys=False))
    return make_plan(RunOptions(job_file=job, run_dir=work / name, port=free_port(), trainer_port=0))


def validation_noise(seeds: int, work: Path) -> list[float]:
    """The base model's validation score, once per sampling seed (one vLLM server for all)."""
    plan = local_plan(default_job(), work, "noise")
    write_config(plan)  # and vLLM's key guard, where the plan's server looks for it
    server = VLLMProcess(plan.vllm, work / "vllm.log", start_timeout=900, cwd=work, env=plan.secret_env)
    server.start()
    os.environ.update(plan.secret_env)  # the trainer's clients, in this process, send the run's key
    scores: list[float] = []
    try:
        for seed in range(seeds):
            grpo = plan.config.grpo.model_copy(update={"seed": seed})
            cfg = plan.config.model_copy(update={"grpo": grpo, "run_dir": str(work / f"noise-{seed}"), "port": 0})
            run = GRPORun(cfg, DistContext())
            sampling = run._setup_sampling(None, checked_task(cfg))
            run._serve(sampling, 0)
            scores.append(run._evaluate(sampling, sampling.val, "val"))
            print(f"  seed {seed}: validation {scores[-1]:.4f}", flush=True)
    finally:
        server.stop()
    return scores


def learning_run(
    steps: int,
    overlap: bool,
    seed: int,
    work: Path,
    runner: Sequence[str] = ("-m", "grpo_operator.local.cli"),
    label: str = "",
) -> dict[str, Any]:
    """One ``grpo-local`` run of the embedded default (``runner``: the interpreter's arguments that start it);
    its summary.json plus the wall time."""
    doc = default_job()
    doc["spec"]["grpo"].update(overlap_rollouts=overlap, seed=seed)
    name = f"run-{'overlap' if overlap else 'sequential'}-seed{seed}{label}"
    job = work / f"{name}.yaml"
    job.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_dir = work / name
    started = time.monotonic()
    cmd = [sys.executable, *runner, str(job), "--steps", str(steps), "--run-dir", str(run_dir),
           "--port", str(free_port()), "--trainer-port", "0", "--fresh", "--no-plot"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"grpo-local failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["bench_wall_seconds"] = time.monotonic() - started
    gain = summary["final_val_score"] - summary["baseline_val_score"]
    print(f"  {name}: validation {summary['val_scores']} gain {gain:+.4f}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 noise seeds, 1 training seed of each mode")
    parser.add_argument("--seeds", type=int, default=6, help="sampling seeds for the noise")
    parser.add_argument("--train-seeds", type=int, default=3, help="training seeds of the sequential runs")
    parser.add_argument("--overlap-seeds", type=int, default=1, help="training seeds of the overlapped runs")
    parser.add_argument("--steps", type=int, default=None, help="default: the embedded default's num_train_steps")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md and the figure alone")
    args = parser.parse_args()
    seeds, train_seeds, overlap_seeds = (3, 1, 1) if args.quick else (args.seeds, args.train_seeds, args.overlap_seeds)
    steps = args.steps or default_job()["spec"]["grpo"]["num_train_steps"]  # builds the tiny model once
    configs = [(False, seed) for seed in range(train_seeds)] + [(True, seed) for seed in range(overlap_seeds)]
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        work = Path(tmp)
        print(f"validation noise over {seeds} sampling seeds (base model):", flush=True)
        noise = validation_noise(seeds, work)
        runs = [(overlap, seed, learning_run(steps, overlap, seed, work)) for overlap, seed in configs]

    figure = LearningFigure.measured(steps, noise, [s["final_val_score"] - s["baseline_val_score"] for *_, s in runs])
    lines = [
        f"Validation score of the base model over {seeds} sampling seeds: mean {statistics.fmean(noise):.4f}, "
        f"standard deviation {figure.sampling_sd:.4f} (min {min(noise):.4f}, max {max(noise):.4f}). What final − "
        "baseline varies by when nothing is learnt (two evaluations, each with that spread): "
        f"**{figure.null_gain_sd:.4f}** (√2 × {figure.sampling_sd:.4f}). The tests' margin: "
        f"{MARGIN_SDS:g} × that = **{figure.margin:.4f}** (tests/support/learning.py reads it from "
        f"`bench/{FIGURE_FILE.name}`, written by this run).",
        "",
        "| mode | seed | steps | baseline val | final val | gain | gain / null sd | best val (step) | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for overlap, seed, s in runs:
        gain = s["final_val_score"] - s["baseline_val_score"]
        lines.append(
            f"| {'overlapped' if overlap else 'sequential'} | {seed} | {s['steps']} | {s['baseline_val_score']:.4f} | "
            f"{s['final_val_score']:.4f} | {gain:+.4f} | {gain / figure.null_gain_sd:.1f} | {s['best_val_score']:.4f} "
            f"({s['best_step']}) | {s['bench_wall_seconds']:.0f} |"
        )
    gains = figure.gains
    spread = statistics.stdev(gains) if len(gains) > 1 else float("nan")
    lines += [
        "",
        f"Gain across the {len(gains)} training runs: mean {statistics.fmean(gains):+.4f}, standard deviation "
        f"{spread:.4f}, smallest {min(gains):+.4f}: {figure.clearance:.1f} of those standard deviations above the "
        "margin (how far a test run's gain can fall short of the usual one and still pass).",
    ]
    table = "\n".join(lines)
    print(table)
    if min(gains) < figure.margin:
        print(f"WARNING: a run gained {min(gains):+.4f}, below the margin {figure.margin:.4f}: the tests would fail")
    if not args.no_write:
        figure.write()
        write_section("learning", f"## Learning of the embedded default, and validation noise\n\n{header('learning')}\n{table}")


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
