"""Entry point of the trainer process (one per training GPU under the launcher).

    python -m grpo_trainer.run.main --config /etc/grpo/config.json
    python -m grpo_trainer.run.launch --nproc 3 grpo_trainer.run.main --config ...

Exit status: 0 when the run finished, 75 (EX_TEMPFAIL) when a signal stopped it
after a checkpoint before the last step (a rerun resumes), 78 (EX_CONFIG) when the
job's program, metric or data is wrong or its run directory holds another job's run
(found before any model loads), 1 when it failed otherwise (progress.json says why). ``--check`` stops after that check.
With ``$GRPO_TERMINATION_LOG`` set (in a pod: the container's
terminationMessagePath), the final progress is also written there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Optional

# litellm fetches a model price map at import time unless told not to; a cluster
# without egress would wait on it in every process.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from grpo_trainer.contract import exit_codes  # noqa: E402
from grpo_trainer.contract.config import CONFIG_ENV, TERMINATION_LOG_ENV, TrainerConfig  # noqa: E402
from grpo_trainer.contract.progress import Progress, termination_message  # noqa: E402
from grpo_trainer.run.logs import configure_logging  # noqa: E402
from grpo_trainer.run.ownership import ForeignRunError, check_owner  # noqa: E402
from grpo_trainer.run.progress_board import ProgressBoard  # noqa: E402
from grpo_trainer.run.stopflag import StopFlag  # noqa: E402

if TYPE_CHECKING:
    from grpo_trainer.dspy.task import TaskError

log = logging.getLogger("grpo_trainer")


def main(argv: list[str] | None = None) -> int:
    # Before torch and DSPy load (below): a SIGTERM during start-up stops the run instead of killing it.
    stop = StopFlag().install()
    parser = argparse.ArgumentParser(prog="grpo-trainer", description="Run GRPO on a DSPy program (one rank).")
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV), help=f"trainer config JSON (or ${CONFIG_ENV})")
    parser.add_argument("--log-format", choices=["json", "text"], default=None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check the job's code, program, metric and data (no model loaded), print what it found; exit 0 or 78",
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    if not args.config:
        parser.error(f"--config or ${CONFIG_ENV} is required")
    cfg = TrainerConfig.load(args.config)

    # The job's own program, metric and data first, on the main rank, before torch loads: a
    # mistake in them fails in seconds. The other ranks wait in init_distributed meanwhile (on the
    # launcher's store, with no time limit: if this rank exits instead, the launcher ends them).
    from grpo_trainer.dspy.task import Task, TaskError, checked_task

    task: Optional[Task] = None
    if args.check or os.environ.get("RANK", "0") == "0":
        try:
            if cfg.owner is not None:
                check_owner(cfg.run_path, cfg.owner)
        except ForeignRunError as exc:
            log.error("invalid job: %s: %s", exc.reason, exc)
            if not args.check:  # nothing goes into the other run's progress.json
                write_termination_message(refusal(cfg, exc))
            return exit_codes.INVALID_JOB
        try:
            task = checked_task(cfg)
        except TaskError as exc:
            log.error("invalid job: %s: %s", exc.reason, exc)
            if not args.check:
                write_termination_message(report_invalid_job(cfg, exc))
            return exit_codes.INVALID_JOB
        except Exception:  # e.g. a data set that cannot be fetched for now: a failure, retried
            log.exception("could not load the job's program, metric or data")
            return exit_codes.FAILED
    if args.check:
        assert task is not None
        sys.stdout.write(json.dumps(task.summary(), indent=1) + "\n")
        return exit_codes.DONE

    from grpo_trainer.run.distributed import init_distributed, shutdown
    from grpo_trainer.run.loop import GRPORun

    dist = init_distributed(cfg.device, timeout_seconds=cfg.train.ddp_timeout)
    run = GRPORun(cfg, dist, stop, task if dist.is_main else None)
    try:
        phase = run.run()
    except Exception:
        log.exception("trainer failed", extra={"rank": dist.rank})
        return exit_codes.FAILED
    finally:
        run.close()
        shutdown(dist)
        write_termination_message(run.final_progress())
    log.info("trainer finished", extra={"phase": phase, "rank": dist.rank})
    return exit_codes.DONE if phase == "done" else exit_codes.INTERRUPTED


def report_invalid_job(cfg: TrainerConfig, exc: TaskError) -> Progress:
    """progress.json says why the job is invalid (a resumed run keeps its history); returns the document."""
    try:
        previous = Progress.read(cfg.run_dir)
    except ValueError:
        previous = None
    board = ProgressBoard(cfg.run_dir, cfg.job_name, cfg.grpo.num_train_steps, initial=previous)
    board.fail(str(exc), reason=exc.reason)
    return board.snapshot()


def refusal(cfg: TrainerConfig, exc: ForeignRunError) -> Progress:
    """The final progress of a trainer that refused another job's run directory (written nowhere in it)."""
    return Progress(
        job=cfg.job_name, max_steps=cfg.grpo.num_train_steps, phase="failed", finished=True, error=str(exc),
        error_reason=exc.reason,
    )  # fmt: skip


def write_termination_message(progress: Optional[Progress]) -> None:
    """The main rank's final progress into ``$GRPO_TERMINATION_LOG``, when set (best effort)."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if not path or progress is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(termination_message(progress))
    except OSError as exc:
        log.warning("could not write the termination message", extra={"path": path, "error": str(exc)})


if __name__ == "__main__":
    sys.exit(main())
