"""The runner's live view of a run: a tqdm bar on a terminal or in a notebook, one line per change otherwise.

Both render the same fields of the trainer's progress document (step, phase,
reward, validation score, ETA); log records go through the display so they never
tear the bar.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional, Protocol, TextIO

from grpo_trainer.contract.progress import Progress


def format_duration(seconds: Optional[float]) -> str:
    """``1:02:03`` / ``2:03``; ``--:--`` when unknown."""
    if seconds is None:
        return "--:--"
    total = int(round(max(0.0, seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def status_fields(p: Progress) -> str:
    """The run's state in one line, without the bar."""
    reward = "-" if p.reward_mean is None else f"{p.reward_mean:.3f}"
    if p.reward_mean is not None and p.reward_std is not None:
        reward += f"±{p.reward_std:.3f}"
    val = f"val {_score(p.val_score)}"
    if p.best_val_score is not None:
        val += f" (best {_score(p.best_val_score)} @{p.best_step})"
    return f"{p.step}/{p.max_steps} {p.phase:<8} reward {reward}  {val}  ETA {format_duration(p.eta_seconds)}"


class Display(Protocol):
    def update(self, progress: Progress) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class BarDisplay:
    """A tqdm progress bar over the run's steps, with reward, validation score and phase beside it.

    ``tqdm.auto`` draws a widget in a notebook and a terminal bar elsewhere; log records
    are written above the bar (``tqdm.write``) so they never tear it.
    """

    def __init__(self, stream: TextIO, *, notebook: bool = False) -> None:
        from tqdm import tqdm as terminal_tqdm
        from tqdm.auto import tqdm as auto_tqdm

        self.stream = stream
        self._tqdm = auto_tqdm if notebook else terminal_tqdm
        self._bar: Optional[Any] = None

    def _ensure(self, total: int) -> Any:
        if self._bar is None:
            self._bar = self._tqdm(total=total, unit="step", file=self.stream, dynamic_ncols=True, leave=True)
        elif self._bar.total != total:
            self._bar.total = total
        return self._bar

    def update(self, progress: Progress) -> None:
        bar = self._ensure(progress.max_steps)
        if progress.step != bar.n:
            bar.n = progress.step
        reward = "-" if progress.reward_mean is None else f"{progress.reward_mean:.3f}"
        bar.set_description(progress.phase, refresh=False)
        bar.set_postfix_str(f"reward {reward}, val {_score(progress.val_score)} (best {_score(progress.best_val_score)})")

    def message(self, text: str) -> None:
        if self._bar is None:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            self._bar.write(text, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None


class LineDisplay:
    """For logs and pipes: a timestamped line when the step, phase or a score changes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last: Optional[tuple[object, ...]] = None
        self._t0 = time.monotonic()

    def update(self, progress: Progress) -> None:
        key = (progress.step, progress.phase, progress.val_score, progress.reward_mean, progress.error)
        if key == self._last:
            return
        self._last = key
        self.message(status_fields(progress))

    def message(self, text: str) -> None:
        self.stream.write(f"[{format_duration(time.monotonic() - self._t0)}] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class JobLinesDisplay:
    """For several jobs at once (a pool run): a line per change of a job's step, phase or score, named."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self._last: dict[str, tuple[object, ...]] = {}

    def update(self, progress: Progress) -> None:
        key = (progress.step, progress.phase, progress.val_score, progress.reward_mean, progress.error)
        if self._last.get(progress.job) == key:
            return
        self._last[progress.job] = key
        self.display.message(f"{progress.job}: {status_fields(progress)}")

    def message(self, text: str) -> None:
        self.display.message(text)

    def close(self) -> None:
        self.display.close()


def in_notebook() -> bool:
    """Running inside a Jupyter kernel (IPython's ZMQ shell), where tqdm draws a widget."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def make_display(stream: TextIO) -> Display:
    """A bar on a terminal or in a notebook; timestamped lines in logs and pipes."""
    if in_notebook():
        return BarDisplay(stream, notebook=True)
    return BarDisplay(stream) if stream.isatty() else LineDisplay(stream)


class DisplayLogHandler(logging.Handler):
    """Routes log records through the display (above the bar, never through it)."""

    def __init__(self, display: Display, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.display = display
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.message(self.format(record))
        except Exception:  # a display failure must not break the run
            self.handleError(record)
