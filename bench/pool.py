"""K jobs on one inference pool vs K jobs each with its own vLLM.  bash bench/run.sh pool [--ks 1,2,4] [--noisy]

For each K, in the same run and on the same machine: K jobs of the embedded default (training seeds
0..K-1, the proof shape of bench/learning.json) run

* **shared**: ``grpo-local --pool`` -- one GRPOInferencePool server, a trainer per job (the operator's
  rendering of jobs on a pool: adapters ``<job>-policy-vN``, runs in the pool's volume, the pool's key);
* **dedicated**: K ``grpo-local`` runs side by side, each with its own vLLM server (free ports each).

Measured per job: the median step time (the trainer's own ``timings.step``, read from progress.json as
each step ends; the first step left out when there are more), the validation gain (final - baseline,
held to the noise margin bench/learning.py measured), and CPU-seconds: the job's trainer process tree,
plus its vLLM's (dedicated) or 1/K of the pool's. Per case: total wall time, the vLLM processes and their
peak resident memory. ``--noisy``: K = 2 on the pool once more with the second job sampling 4x the
rollouts per step (samples per input and threads x 4), against the same pair without it.

``--tiny`` proves the bench at a small shape (1 step, 2 examples x 4 samples, 8 validation rows):
nothing is written then unless ``--write``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from _results import header, logs_dir, write_section

from grpo_operator.local.default import default_job
from grpo_operator.resolve import TRAINER_MODULE
from grpo_trainer.contract.progress import Progress
from support.learning import LearningFigure
from support.local_pool import on_pool, pool_manifest
from support.vllm import free_port

POOL = "bench-pool"
SAMPLE_SECONDS = 1.0
NOISY_FACTOR = 4
RUNNER = ("-m", "grpo_operator.local.cli")


def job_doc(base: dict[str, Any], seed: int, *, noisy: bool = False) -> dict[str, Any]:
    """Job ``job-<seed>`` of the default: training seed ``seed``; ``noisy``: NOISY_FACTOR x its rollouts."""
    doc = copy.deepcopy(base)
    doc["metadata"]["name"] = f"job-{seed}"
    grpo = doc["spec"]["grpo"]
    grpo["seed"] = seed
    if noisy:
        grpo["num_samples_per_input"] *= NOISY_FACTOR
        grpo["num_threads"] *= NOISY_FACTOR
    return doc


PASSIVE = {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}


def cores_shared(doc: dict[str, Any], *parts: str) -> dict[str, Any]:
    """``doc`` with OpenMP threads that sleep when idle in its ``parts`` (spec.trainer, spec.inference, a pool's
    spec.server): what the local runner sets for a run whose processes compute side by side on the same cores
    (resolve._cpu_sharing_env), set here for every case with K > 1, shared and dedicated alike. Left spinning,
    each dedicated server's idle threads take the cores the other jobs compute on (a first run's dedicated K = 2
    steps took 97-292 s against the pool's 50 s), and the figure would measure OpenMP, not pooling."""
    for part in parts:
        env = doc["spec"].setdefault(part, {}).setdefault("env", [])
        if PASSIVE not in env:
            env.append(dict(PASSIVE))
    return doc


def tiny_shape(doc: dict[str, Any], work: Path) -> dict[str, Any]:
    """The default at a shape that proves the bench in minutes: 2 examples x 4 samples, 8 validation rows."""
    val = work / "val-8.jsonl"
    rows = Path(doc["spec"]["data"]["validation"]["file"]["path"]).read_text().splitlines()[:8]
    val.write_text("\n".join(rows) + "\n")
    doc["spec"]["data"]["validation"]["file"]["path"] = str(val)
    doc["spec"]["grpo"].update(num_dspy_examples_per_grpo_step=2, num_samples_per_input=4)
    return doc


# --------------------------------------------------------------------------- watching the processes


@dataclass
class Usage:
    """CPU-seconds and processes of one owner (a job's trainer, a job's vLLM, the pool's vLLM)."""

    cpu: dict[tuple[int, float], float] = field(default_factory=dict)  # (pid, start) -> last user+system seen
    peak_rss: int = 0
    peak_processes: int = 0

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


class Census:
    """Samples, every second, the process trees under the runners: CPU per owner (the runner's direct child --
    vLLM or a trainer -- and everything under it, owned by the job whose run directory it works in, or by the
    pool), and each job's step times from its progress.json. Each process's own CPU (user + system), up to its
    last sample: a process that exits loses under 1 s, one that lives under 1 s is not seen."""

    def __init__(self, runners: list[subprocess.Popen[bytes]], run_dirs: dict[str, Path]) -> None:
        self.runners = runners
        self.run_dirs = run_dirs
        self.usage: dict[tuple[str, str], Usage] = {}  # (role, owner)
        self.steps: dict[str, dict[int, float]] = {job: {} for job in run_dirs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Census":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    @staticmethod
    def _owner(proc: psutil.Process) -> tuple[str, str]:
        cmdline = " ".join(proc.cmdline())
        cwd = Path(proc.cwd())
        if TRAINER_MODULE in cmdline:
            return "trainer", cwd.name  # its run directory, runs/<job>
        # vLLM works in its logs folder: runs/<job>/logs (a job's own) or pools/<pool>/logs (the pool's)
        return "vllm", ("pool" if cwd.parent.parent.name == "pools" else cwd.parent.name)

    def _sample(self) -> None:
        seen: dict[tuple[str, str], list[psutil.Process]] = {}
        for runner in self.runners:
            try:
                children = psutil.Process(runner.pid).children()
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    key = self._owner(child)
                    seen.setdefault(key, []).extend([child, *child.children(recursive=True)])
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        for key, procs in seen.items():
            usage = self.usage.setdefault(key, Usage())
            rss = live = 0
            for proc in procs:
                try:
                    with proc.oneshot():
                        t = proc.cpu_times()
                        # its own time only: a reaped child's is in its parent's children_* and was sampled itself
                        usage.cpu[(proc.pid, proc.create_time())] = t.user + t.system
                        rss += proc.memory_info().rss
                        live += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            usage.peak_rss = max(usage.peak_rss, rss)
            usage.peak_processes = max(usage.peak_processes, live)
        for job, run_dir in self.run_dirs.items():
            try:
                progress = Progress.read(run_dir) if (run_dir / "progress.json").is_file() else None
            except (OSError, ValueError):
                continue
            if progress is not None and progress.step > 0 and progress.timings.step is not None:
                self.steps[job].setdefault(progress.step, progress.timings.step)


# --------------------------------------------------------------------------- one case


@dataclass
class JobResult:
    name: str
    seed: int
    steps: int
    baseline: float
    final: float
    step_times: dict[int, float]
    cpu_seconds: float

    @property
    def gain(self) -> float:
        return self.final - self.baseline

    @property
    def median_step(self) -> float:
        times = [t for s, t in sorted(self.step_times.items()) if s > 1 or len(self.step_times) == 1]
        return statistics.median(times) if times else math.nan


@dataclass
class Case:
    mode: str  # "shared" or "dedicated"
    k: int
    noisy: bool
    wall: float
    jobs: list[JobResult]
    vllm_processes: int
    vllm_rss: int  # bytes, peak, all servers
    vllm_cpu: float
    runner_cpu: float = 0.0


def _cli(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *RUNNER, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def run_case(
    mode: str, docs: list[dict[str, Any]], steps: int, work: Path, logs: Path, *, noisy: bool = False
) -> Case:
    """The jobs ``docs`` on one pool (``shared``) or each alone (``dedicated``), all started at once."""
    k = len(docs)
    label = f"{mode}-k{k}{'-noisy' if noisy else ''}"
    where = work / label
    where.mkdir()
    names = [d["metadata"]["name"] for d in docs]
    common = ["--steps", str(steps), "--trainer-port", "0", "--fresh", "--no-plot"]
    if mode == "shared":
        pool = where / "pool.yaml"
        pool_doc = pool_manifest(POOL, docs[0], k)
        pool.write_text(yaml.safe_dump(cores_shared(pool_doc, "server") if k > 1 else pool_doc, sort_keys=False))
        files = []
        for doc in docs:
            f = where / f"{doc['metadata']['name']}.yaml"
            job = on_pool(doc, doc["metadata"]["name"], POOL)
            f.write_text(yaml.safe_dump(cores_shared(job, "trainer") if k > 1 else job, sort_keys=False))
            files.append(str(f))
        argv = ["--pool", str(pool), *files, "--port", str(free_port()), *common]
        started = time.monotonic()
        runners = [_cli(argv, where, logs / f"{label}.log")]
    else:
        ports: set[int] = set()
        while len(ports) < k:  # a free port each, never the same twice
            ports.add(free_port())
        runners = []
        started = time.monotonic()
        for doc, port in zip(docs, sorted(ports)):
            f = where / f"{doc['metadata']['name']}.yaml"
            job = cores_shared(copy.deepcopy(doc), "trainer", "inference") if k > 1 else doc
            f.write_text(yaml.safe_dump(job, sort_keys=False))
            run_dir = where / "runs" / doc["metadata"]["name"]
            argv = [str(f), "--run-dir", str(run_dir), "--port", str(port), *common]
            runners.append(_cli(argv, where, logs / f"{label}-{doc['metadata']['name']}.log"))
    run_dirs = {name: where / "runs" / name for name in names}
    print(f"[{label}] started {len(runners)} runner(s)", flush=True)
    with Census(runners, run_dirs) as census:
        codes = [r.wait() for r in runners]
    wall = time.monotonic() - started
    if any(codes):
        raise SystemExit(f"[{label}] a runner exited {codes}; logs in {logs}")
    usage = census.usage
    pool_usage = usage.get(("vllm", "pool"))
    jobs = []
    for doc, name in zip(docs, names):
        summary = json.loads((run_dirs[name] / "summary.json").read_text())
        trainer = usage.get(("trainer", name), Usage()).cpu_seconds
        own = usage.get(("vllm", name))
        inference = own.cpu_seconds if own is not None else (pool_usage.cpu_seconds / k if pool_usage else 0.0)
        grpo = doc["spec"]["grpo"]
        jobs.append(
            JobResult(
                name=name,
                seed=grpo["seed"],
                steps=summary["steps"],
                baseline=summary["baseline_val_score"],
                final=summary["final_val_score"],
                step_times=census.steps[name],
                cpu_seconds=trainer + inference,
            )
        )
    servers = [u for (role, _), u in usage.items() if role == "vllm"]
    case = Case(
        mode=mode,
        k=k,
        noisy=noisy,
        wall=wall,
        jobs=jobs,
        vllm_processes=sum(u.peak_processes for u in servers),
        vllm_rss=sum(u.peak_rss for u in servers),
        vllm_cpu=sum(u.cpu_seconds for u in servers),
    )
    for j in jobs:
        print(
            f"[{label}] {j.name}: steps {j.steps} median step {j.median_step:.1f} s gain {j.gain:+.4f} "
            f"CPU {j.cpu_seconds:.0f} s",
            flush=True,
        )
    print(f"[{label}] wall {wall:.0f} s, vLLM processes {case.vllm_processes}, vLLM CPU {case.vllm_cpu:.0f} s", flush=True)
    return case


# --------------------------------------------------------------------------- the report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "–"


def table(cases: list[Case], figure: LearningFigure) -> str:
    lines = [
        "| K | mode | wall s | jobs' median step s | jobs' gain (each) | gain ≥ margin | vLLM processes | "
        "vLLM peak RSS MiB | CPU-s per job (trainer + its vLLM share) |",
        "|---:|---|---:|---|---|---|---:|---:|---|",
    ]
    for c in cases:
        if c.noisy:
            continue
        steps = " / ".join(f"{j.median_step:.1f}" for j in c.jobs)
        gains = " / ".join(f"{j.gain:+.4f}" for j in c.jobs)
        ok = "yes" if all(j.gain >= figure.margin for j in c.jobs) else "**no**"
        cpu = " / ".join(f"{j.cpu_seconds:.0f}" for j in c.jobs)
        lines.append(
            f"| {c.k} | {c.mode} | {c.wall:.0f} | {steps} | {gains} | {ok} | {c.vllm_processes} | "
            f"{c.vllm_rss / 2**20:.0f} | {cpu} |"
        )
    lines += [
        "",
        "Shared / dedicated at the same K (below 1: the pool is cheaper or faster):",
        "",
        "| K | wall | median step (mean over jobs) | CPU-s per job (mean) | vLLM CPU-s (all servers) | "
        "vLLM processes | gain difference per seed (shared − dedicated) | within the margin |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    by = {(c.mode, c.k): c for c in cases if not c.noisy}
    for k in sorted({c.k for c in cases if not c.noisy}):
        s, d = by.get(("shared", k)), by.get(("dedicated", k))
        if s is None or d is None:
            continue
        diffs = [a.gain - b.gain for a, b in zip(s.jobs, d.jobs)]
        lines.append(
            f"| {k} | {_ratio(s.wall, d.wall)} | "
            f"{_ratio(statistics.fmean(j.median_step for j in s.jobs), statistics.fmean(j.median_step for j in d.jobs))} | "
            f"{_ratio(statistics.fmean(j.cpu_seconds for j in s.jobs), statistics.fmean(j.cpu_seconds for j in d.jobs))} | "
            f"{_ratio(s.vllm_cpu, d.vllm_cpu)} | {s.vllm_processes} / {d.vllm_processes} | "
            f"{' / '.join(f'{x:+.4f}' for x in diffs)} | "
            f"{'yes' if all(abs(x) <= figure.margin for x in diffs) else '**no**'} |"
        )
    for c in (c for c in cases if c.noisy):
        base = by.get((c.mode, c.k))
        if base is None:
            continue
        calm, loud = c.jobs[0], c.jobs[1]
        lines += [
            "",
            f"Noisy neighbour ({c.mode}, K = {c.k}): {loud.name} samples {NOISY_FACTOR}× the rollouts per step "
            f"(samples per input and threads × {NOISY_FACTOR}). {calm.name}'s median step: "
            f"**{calm.median_step:.1f} s** beside it, {base.jobs[0].median_step:.1f} s beside an ordinary job "
            f"({_ratio(calm.median_step, base.jobs[0].median_step)}×); its gain {calm.gain:+.4f} "
            f"(ordinary neighbour: {base.jobs[0].gain:+.4f}). The noisy job's own median step "
            f"{loud.median_step:.1f} s; wall {c.wall:.0f} s.",
        ]
    return "\n".join(lines)


ALONE_DECODE_MS = 10.0  # the projection's: ~24 sequences of one job, 100 tok/s each
PER_SEQUENCE_MS = 0.0084 + 0.0077  # KV read (28 KB/token x ~1 k tokens at 3.35 TB/s) + 2 x 1.54 GFLOP at 400 TFLOP/s
MULTI_LORA_MS = 2.0  # Punica's reported added latency per decode step for mixed-adapter batches
LOCAL_S, EXTERNAL_S = 4.5, 4.5  # one rollout alone: 2.0 + 2.5 s of local generation, 1.5 + 3.0 s of API calls

PROJECTION = """\
### On paper: the seed on H100s, K jobs on one pool

Not measured: a calculation from the inputs of "Paper projection" above (Qwen2.5-1.5B bf16; per rollout
2 local calls of 200 + 250 tokens, 4.5 s, and 4.5 s of external calls; 32 rollouts per step through 24
threads; 100 tok/s per sequence at ~24 concurrent, a decode step of ~10 ms dominated by vLLM's per-step
overhead; overlapped step = G (2 waves of rollouts) + V (validation, 1 wave per step amortized) = 27.0 s
alone) and these assumptions about one vLLM server on one H100 serving K jobs' adapters at once:

| assumption | value | basis |
|---|---|---|
| decode step at B concurrent sequences | 10 ms + (B − 24) × 16.1 µs | the projection's 10 ms at one job's 24; per extra sequence its KV read (28 KB/token × ~1 k tokens at 3.35 TB/s: 8.4 µs) and its matmuls (2 × 1.54 GFLOP at 400 TFLOP/s: 7.7 µs) |
| mixed-adapter batches (rank 8, up to `maxLoras` adapters) | + 2 ms per decode step for K > 1 | Punica's reported ~2 ms/token added latency for its SGMV kernels (vLLM's LoRA kernels descend from them): an assumption, not measured here |
| sequences per job on the server | 12 on average, 24 at peak | local generation is half of each rollout (4.5 of 9 s); 24 threads |
| KV cache | ~69 GB free at 0.9 utilisation: ~2.4 M tokens, ~2,400 sequences of 1 k tokens | no limit below K ≈ 100 |
| vLLM `--max-num-seqs` | raised to ≥ 24 K through `server.extraArgs` | its default (256) would queue the peak of K = 16 (384) |

The step time is given for the average and the peak concurrency (every job generating at once: an upper
bound). GPUs per job: dedicated 3 + 1, on a pool 3 + 1/K (the seed's 3 training GPUs); or 1 + 1 and
1 + 1/K with one training GPU, which the projection above shows loses nothing (the update is ~4% of the
step). In brackets, GPU-seconds per job per step (GPUs × the step at peak): what a platform pays.

| K | sequences avg / peak | decode step avg / peak | tok/s per sequence avg / peak | step (27.0 s alone) | vs alone | GPUs per job: dedicated, 3 training | pool, 3 training | dedicated, 1 training | pool, 1 training |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
"""


def decode_ms(k: int, sequences: int) -> float:
    return ALONE_DECODE_MS + max(0, sequences - 24) * PER_SEQUENCE_MS + (MULTI_LORA_MS if k > 1 else 0.0)


def step_seconds(k: int, sequences: int) -> float:
    """The overlapped step: 3 rollouts' time (G: 2 waves; V: 1 wave amortized), local generation slowed."""
    rollout = LOCAL_S * decode_ms(k, sequences) / ALONE_DECODE_MS + EXTERNAL_S
    return 3 * rollout


def projection() -> str:
    rows = []
    for k in (1, 4, 8, 16):
        avg, peak = 12 * k, 24 * k
        lo, hi = step_seconds(k, avg) if k > 1 else step_seconds(1, 24), step_seconds(k, peak)
        rows.append(
            f"| {k} | {avg} / {peak} | {decode_ms(k, avg):.1f} / {decode_ms(k, peak):.1f} ms | "
            f"{1000 / decode_ms(k, avg):.0f} / {1000 / decode_ms(k, peak):.0f} | {lo:.1f}–{hi:.1f} s | "
            f"{lo / 27.0:.2f}–{hi / 27.0:.2f}× | 4 ({4 * 27.0:.0f}) | {3 + 1 / k:.2f} ({(3 + 1 / k) * hi:.0f}) | "
            f"2 ({2 * 27.0:.0f}) | {1 + 1 / k:.2f} ({(1 + 1 / k) * hi:.0f}) |"
        )
    k16 = step_seconds(16, 24 * 16)
    notes = f"""
Reading it: at K = 16 on one server the seed's step grows by at most {100 * (k16 / 27.0 - 1):.0f}% (every job
generating at once; local generation is half of each rollout, the rest waits on the external API), while
the GPUs per job fall from 4 to 3.06, or to 1.06 with one training GPU per job. With the seed's 3 training
GPUs the pool saves GPUs but not GPU-seconds per step at K = 16 ({3.0625 * k16:.0f} against 108: the
training GPUs, idle ~95% of the step, wait longer); with one training GPU per job it saves both
({1.0625 * k16:.0f} against 54 alone). The lever is the training GPUs, and the pool makes the inference GPU's
share small. Ten PAPILLON-like jobs: 40 GPUs alone, 31 on one pool, 11 on one pool with one training GPU
each. What would break the arithmetic:
a workload whose step is local generation (no external API to wait on: the slowdown is then felt in
full), long completions (KV per sequence grows with them), and `maxLoras` below the number of jobs
sampling at once (vLLM then runs their adapters in separate batches).
"""
    return PROJECTION + "\n".join(rows) + "\n" + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4", help="numbers of jobs, comma-separated (default %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="default: bench/learning.json's steps")
    parser.add_argument("--modes", default="shared,dedicated", help="which cases, comma-separated")
    parser.add_argument("--noisy", action="store_true", help="also K = 2 on the pool with one noisy neighbour")
    parser.add_argument("--tiny", action="store_true", help="a small shape that proves the bench (no write)")
    parser.add_argument("--write", action="store_true", help="write RESULTS.md even with --tiny")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--logs", type=Path, default=None, help="keep the runners' logs here")
    args = parser.parse_args()
    figure = LearningFigure.read()
    steps = args.steps or (1 if args.tiny else figure.steps)
    ks = [int(k) for k in args.ks.split(",")]
    modes = args.modes.split(",")
    write = not args.no_write and (args.write or not args.tiny)
    logs = logs_dir(args.logs, "pool")
    base = default_job()
    cases: list[Case] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        work = Path(tmp)
        if args.tiny:
            base = tiny_shape(base, work)
        plan: list[tuple[str, int, bool]] = [(m, k, False) for k in ks for m in modes]
        if args.noisy:
            plan.append(("shared", 2, True))
        for mode, k, noisy in plan:
            docs = [job_doc(base, seed, noisy=noisy and seed == 1) for seed in range(k)]
            cases.append(run_case(mode, docs, steps, work, logs, noisy=noisy))
            body = report(cases, figure, steps, args.tiny, time.monotonic() - started)
            print(body, flush=True)
            if write:  # after every case: a run stopped early keeps what it measured
                write_section("pool", body)


def report(cases: list[Case], figure: LearningFigure, steps: int, tiny: bool, elapsed: float) -> str:
    shape = "tiny shape (2 examples × 4 samples, 8 validation rows)" if tiny else "the embedded default"
    intro = (
        f"K jobs of {shape}, {steps} steps each, training seeds 0..K−1: on one GRPOInferencePool "
        "(`grpo-local --pool`, one vLLM server; maxLoras 4, maxCpuLoras 4 K) or each with its own vLLM "
        "(`grpo-local` × K side by side), all started at once on this machine's 2 cores (for K > 1, every "
        "process's OpenMP threads sleep when idle, `OMP_WAIT_POLICY=PASSIVE`, in both cases: side by side on "
        "2 cores, spinning threads would measure OpenMP, not pooling); shared and dedicated "
        f"of each K one after the other in the same run ({elapsed / 60:.0f} min in all). Gains are final − "
        f"baseline validation score; the margin is bench/learning.json's {figure.margin:.4f} (4 × the null "
        f"noise {figure.null_gain_sd:.4f}). Median step: the trainer's `timings.step` per step, the first "
        "left out when there are more. CPU-s per job: its trainer's process tree plus its own vLLM's, or 1/K of the pool's "
        "(sampled every second from /proc; the runners' own polling is not counted)."
    )
    return (
        f"## Inference pool: K jobs on one vLLM vs K vLLMs\n\n{header('pool')}\n{intro}\n\n"
        f"{table(cases, figure)}\n\n{projection()}"
    )


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
