"""Experiment tracking (``report_to``) and the completions log (``log_completions``).

Trackers are chosen and imported when the run starts: a missing wandb package is a
clear error before the first rollout, not a crash after an hour of training. wandb
runs offline (files under ``<run_dir>/logs/wandb``, ``wandb sync`` later) when there
is no API key or its server is unreachable, as on an air-gapped cluster.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from grpo_trainer.run.secrets import SECRET_ENVS, Redactor

log = logging.getLogger(__name__)

LOGS_DIR = "logs"
COMPLETIONS_FILE = "completions.jsonl"
ReportTo = Literal["none", "tensorboard", "wandb"]


class TrackingError(RuntimeError):
    """The configured tracker cannot run (raised at start)."""


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, run: Any) -> None:
        self._run = run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


def _wandb_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def make_tracker(report_to: ReportTo, run_dir: str | Path, job: str, config: Mapping[str, Any] | None = None) -> Tracker:
    """The tracker named by ``report_to``; call at start so configuration problems surface before training."""
    logs = Path(run_dir) / LOGS_DIR
    if report_to == "none":
        return NullTracker()
    if report_to == "tensorboard":
        try:
            tracker = TensorBoardTracker(logs / "tensorboard")
        except ImportError as exc:
            log.warning(
                "report_to=tensorboard but TensorBoard is not installed (%s); metrics go only to /metrics and "
                "progress.json. Install the 'tensorboard' package to get event files.",
                exc,
            )
            return NullTracker()
        log.info("TensorBoard event files in %s", tracker.log_dir)
        return tracker
    if report_to == "wandb":
        try:
            import wandb
        except ImportError as exc:
            raise TrackingError(
                "report_to=wandb but the 'wandb' package is not installed in the trainer image; "
                "install it or set train_kwargs.report_to to 'none' or 'tensorboard'"
            ) from exc
        if "WANDB_MODE" not in os.environ and (not os.environ.get("WANDB_API_KEY") or not _wandb_reachable()):
            os.environ["WANDB_MODE"] = "offline"
            log.warning("wandb: no API key or server unreachable; logging offline (run `wandb sync` later)")
        wandb_dir = logs / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "grpo"), name=job, dir=str(wandb_dir), config=dict(config or {}))
        return WandbTracker(run)
    raise TrackingError(f"unknown report_to {report_to!r}; one of none, tensorboard, wandb")


class CompletionLog:
    """Appends one JSON line per rollout completion to ``<run_dir>/logs/completions.jsonl``.

    Thread-safe (rollouts run in threads); a line is written whole. Values of the
    API-key environment variables are redacted from every string, so a model that
    echoes a key (or an error message that quotes one) does not leak it to the volume.
    """

    def __init__(self, run_dir: str | Path, secret_envs: Iterable[str] = SECRET_ENVS) -> None:
        self.path = Path(run_dir) / LOGS_DIR / COMPLETIONS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clean = Redactor.from_env(secret_envs)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(
        self,
        step: int,
        example: str | int,
        predictor: str,
        completion: str,
        reward: float,
        **extra: str | int | float | bool | None,
    ) -> None:
        record: dict[str, Any] = {
            "time": round(time.time(), 3),
            "step": step,
            "example": example,
            "predictor": predictor,
            "completion": completion,
            "reward": reward,
            **extra,
        }
        line = json.dumps({k: self._clean(v) if isinstance(v, str) else v for k, v in record.items()}, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> CompletionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
