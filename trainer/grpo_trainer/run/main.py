"""Entry point of the trainer process (one per training GPU under the launcher).

    python -m grpo_trainer.run.main --config /etc/grpo/config.json
    python -m grpo_trainer.run.launch --nproc 3 grpo_trainer.run.main --config ...

Exit status: 0 when the run finished, 75 (EX_TEMPFAIL) when a signal stopped it
after a checkpoint before the last step (a rerun resumes), 1 when it failed
(progress.json says why). With ``$GRPO_TERMINATION_LOG`` set (in a pod: the
container's terminationMessagePath), the final progress is also written there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

# litellm fetches a model price map at import time unless told not to; a cluster
# without egress would wait on it in every process.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from grpo_trainer.contract import exit_codes  # noqa: E402
from grpo_trainer.contract.config import CONFIG_ENV, TERMINATION_LOG_ENV, TrainerConfig  # noqa: E402
from grpo_trainer.contract.progress import termination_message  # noqa: E402
from grpo_trainer.run.logs import configure_logging  # noqa: E402
from grpo_trainer.run.stopflag import StopFlag  # noqa: E402

if TYPE_CHECKING:
    from grpo_trainer.run.loop import GRPORun

log = logging.getLogger("grpo_trainer")


def main(argv: list[str] | None = None) -> int:
    # Before torch and DSPy load (below): a SIGTERM during start-up stops the run instead of killing it.
    stop = StopFlag().install()
    parser = argparse.ArgumentParser(prog="grpo-trainer", description="Run GRPO on a DSPy program (one rank).")
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV), help=f"trainer config JSON (or ${CONFIG_ENV})")
    parser.add_argument("--log-format", choices=["json", "text"], default=None)
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    if not args.config:
        parser.error(f"--config or ${CONFIG_ENV} is required")
    cfg = TrainerConfig.load(args.config)

    from grpo_trainer.run.distributed import init_distributed, shutdown
    from grpo_trainer.run.loop import GRPORun

    dist = init_distributed(cfg.device, timeout_seconds=cfg.train.ddp_timeout)
    run = GRPORun(cfg, dist, stop)
    try:
        phase = run.run()
    except Exception:
        log.exception("trainer failed", extra={"rank": dist.rank})
        return exit_codes.FAILED
    finally:
        run.close()
        shutdown(dist)
        write_termination_message(run)
    log.info("trainer finished", extra={"phase": phase, "rank": dist.rank})
    return exit_codes.DONE if phase == "done" else exit_codes.INTERRUPTED


def write_termination_message(run: GRPORun) -> None:
    """The main rank's final progress into ``$GRPO_TERMINATION_LOG``, when set (best effort)."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    progress = run.final_progress()
    if not path or progress is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(termination_message(progress))
    except OSError as exc:
        log.warning("could not write the termination message", extra={"path": path, "error": str(exc)})


if __name__ == "__main__":
    sys.exit(main())
