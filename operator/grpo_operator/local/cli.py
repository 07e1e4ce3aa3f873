"""``grpo-local``: run a GRPOJob file (or the embedded default) on this machine."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from grpo_operator.local.display import Display, DisplayLogHandler, JobLinesDisplay, make_display
from grpo_operator.local.plan import DEFAULT_VLLM_PORT, InvalidInput, RunOptions
from grpo_operator.local.runner import EXIT_FAILED, EXIT_INVALID, EXIT_KILLED, EXIT_OK, RunResult, check, run, run_pool
from grpo_trainer.contract.config import DEFAULT_PORT


def _volume(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(directory)


def _port(text: str, lowest: int = 1) -> int:
    port = int(text)
    if not lowest <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number ({lowest}-65535)")
    return port


def _port_or_off(text: str) -> int:
    return _port(text, lowest=0)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grpo-local",
        description=(
            "Run a GRPOJob on this machine without Kubernetes: vLLM and the trainer as child processes, "
            "a run directory as the shared volume. With no JOB, runs the embedded default "
            "(PAPILLON on a tiny generated model, CPU). Ctrl-C stops after a checkpoint; rerunning resumes."
        ),
        epilog="Exit codes: 0 finished or stopped, 1 the run failed, 2 invalid input, 130 killed by a second Ctrl-C "
        "(with --pool: the worst of its jobs').",
    )
    p.add_argument(
        "jobs",
        nargs="*",
        type=Path,
        metavar="JOB",
        help="GRPOJob YAML file (default: the embedded default job); with --pool, the jobs to run on the pool",
    )
    p.add_argument(
        "--pool",
        type=Path,
        metavar="POOL",
        help="a GRPOInferencePool YAML file: run its vLLM server once and every JOB (each naming it in "
        "spec.inference.pool) on it, their runs in runs/<job> of the pool's volume (--volume CLAIM=DIR, "
        "default: the working directory)",
    )
    p.add_argument(
        "--run-dir", type=Path, help="run directory: adapters, checkpoints, logs (default: ./runs/<job name>)"
    )
    p.add_argument(
        "--port", type=_port, default=DEFAULT_VLLM_PORT, help="vLLM server (the pool's) port (default %(default)s)"
    )
    p.add_argument(
        "--trainer-port",
        type=_port_or_off,
        default=DEFAULT_PORT,
        help="trainer /progress and /metrics port, 0: off; with --pool the first job's, the next ones count up "
        "(default %(default)s)",
    )
    p.add_argument("--steps", type=_positive, help="override grpo.num_train_steps (for quick tries)")
    p.add_argument(
        "--volume",
        type=_volume,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a directory standing in for the PersistentVolumeClaim NAME (model or data volumes); repeatable",
    )
    p.add_argument(
        "--code",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder the trainer imports the program and metric from (after spec.code; the job file's "
        "folder and the working directory always are); repeatable",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only check the job: the file, then the program, metric, data and code as the trainer does "
        "first (seconds; no model, no vLLM); exit 0 or 2",
    )
    p.add_argument("--fresh", action="store_true", help="delete the run directory first (no resume)")
    p.add_argument("--no-plot", action="store_true", help="do not write report.png")
    p.add_argument("--print-default", action="store_true", help="print the embedded default job as YAML and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.print_default:
        from grpo_operator.local.default import default_job_yaml

        sys.stdout.write(default_job_yaml())
        return EXIT_OK

    display = make_display(sys.stdout)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    root.addHandler(DisplayLogHandler(display, logging.DEBUG if args.verbose else logging.INFO))
    for noisy in ("httpx", "httpcore", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def options(job: Optional[Path], trainer_port: int) -> RunOptions:
        return RunOptions(
            job_file=job,
            run_dir=args.run_dir,
            port=args.port,
            trainer_port=trainer_port,
            steps=args.steps,
            volumes=dict(args.volume),
            fresh=args.fresh,
            plot=not args.no_plot,
            code_dirs=tuple(args.code),
        )

    if args.pool is not None:
        refusal = None
        if not args.jobs:
            refusal = "--pool: give the job files to run on the pool"
        elif args.run_dir is not None:
            refusal = "--run-dir: a job on a pool runs in runs/<job> of the pool's volume (--volume CLAIM=DIR)"
        elif args.check:
            refusal = "--check checks one job: run grpo-local --check JOB.yaml on each job file"
        if refusal is not None:
            sys.stderr.write(f"grpo-local: {refusal}\n")
            return EXIT_INVALID
        jobs = tuple(options(job, args.trainer_port + i if args.trainer_port else 0) for i, job in enumerate(args.jobs))
        return _run_pool(args.pool, jobs, args.port, display)
    if len(args.jobs) > 1:
        sys.stderr.write("grpo-local: give one job file, or several with --pool POOL.yaml (jobs on one pool)\n")
        return EXIT_INVALID
    return _run_one(options(args.jobs[0] if args.jobs else None, args.trainer_port), args.check, display)


def _run_pool(pool: Path, jobs: tuple[RunOptions, ...], port: int, display: Display) -> int:
    """A pool run: each job's report (named), and the worst exit code of its jobs."""
    try:
        results = run_pool(pool, jobs, JobLinesDisplay(display), port=port)
    except InvalidInput as exc:
        display.close()
        sys.stderr.write(f"grpo-local: {exc}\n")
        return EXIT_INVALID
    except KeyboardInterrupt:
        display.close()
        sys.stderr.write("grpo-local: interrupted\n")
        return EXIT_KILLED
    for options, result in zip(jobs, results):
        sys.stdout.write(f"\n== {result.summary.job if result.summary is not None else options.job_file} ==\n")
        _report(result)
    codes = {r.exit_code for r in results}
    return next(code for code in (EXIT_KILLED, EXIT_INVALID, EXIT_FAILED, EXIT_OK) if code in codes)


def _run_one(options: RunOptions, check_only: bool, display: Display) -> int:
    try:
        if check_only:
            checked = check(options)
            display.close()
            if checked.exit_code == EXIT_OK:
                sys.stdout.write(f"the job is valid; the trainer found:\n{checked.report}\n")
            else:
                sys.stderr.write(f"grpo-local: invalid job: {checked.report}\n")
            return checked.exit_code
        result = run(options, display)
    except InvalidInput as exc:
        display.close()
        sys.stderr.write(f"grpo-local: {exc}\n")
        return EXIT_INVALID
    except KeyboardInterrupt:  # before the runner's handlers are installed or after they are gone
        display.close()
        sys.stderr.write("grpo-local: interrupted\n")
        return EXIT_KILLED
    return _report(result)


def _report(result: RunResult) -> int:
    """Print a run's report, its export and its error; its exit code."""
    if result.table:
        sys.stdout.write(result.table + "\n")
    for exported in result.export.destinations if result.export else ():
        if exported.ok:
            sys.stdout.write(f"exported to {exported.name}: {exported.location}\n")
        else:
            sys.stderr.write(f"grpo-local: export to {exported.name} failed: {exported.error}\n")
    if result.export_error:
        sys.stderr.write(f"grpo-local: export failed: {result.export_error}\n")
    if result.error:
        sys.stderr.write(f"grpo-local: {result.outcome}: {result.error}\n")
    elif result.outcome == "stopped":
        sys.stdout.write("stopped; run the same command again to resume from the last checkpoint\n")
    sys.stdout.flush()
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
