"""Entry point of the trainer process (one per GPU under torchrun).

    python -m grpo_trainer.main --config /etc/grpo/config.json
    torchrun --nproc-per-node 3 -m grpo_trainer.main --config ...

Exit status: 0 when the run finished or was stopped by a signal after a
checkpoint (a rerun resumes), 1 when it failed (progress.json says why).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# litellm fetches a model price map at import time unless told not to; a cluster
# without egress would wait on it in every process.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .config import CONFIG_ENV, TrainerConfig  # noqa: E402
from .logs import configure_logging  # noqa: E402
from .stopflag import StopFlag  # noqa: E402

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

    from .distributed import init_distributed, shutdown
    from .loop import GRPORun

    dist = init_distributed(cfg.device)
    run = GRPORun(cfg, dist, stop)
    try:
        phase = run.run()
    except Exception:
        log.exception("trainer failed", extra={"rank": dist.rank})
        return 1
    finally:
        run.close()
        shutdown(dist)
    log.info("trainer finished", extra={"phase": phase, "rank": dist.rank})
    return 0


if __name__ == "__main__":
    sys.exit(main())
