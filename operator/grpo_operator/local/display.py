"""The runner's live view of a run: a one-line progress bar on a terminal, one line per change otherwise.

Both render the same fields of the trainer's progress document (step, phase,
reward, validation score, ETA); log records go through the display so they never
tear the bar.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Optional, Protocol, TextIO

from grpo_trainer.contract.progress import Progress

BAR_CELLS = 24


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


def bar(step: int, max_steps: int, cells: int = BAR_CELLS) -> str:
    filled = 0 if max_steps <= 0 else min(cells, round(cells * step / max_steps))
    return "[" + "#" * filled + "." * (cells - filled) + "]"


class Display(Protocol):
    def update(self, progress: Progress) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class BarDisplay:
    """Redraws one terminal line in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._line = ""

    def update(self, progress: Progress) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        line = f"{bar(progress.step, progress.max_steps)} {status_fields(progress)}"[: max(10, width - 1)]
        self._line = line
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write("\r\x1b[2K" + text + "\n" + self._line)
        self.stream.flush()

    def close(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
        self._line = ""


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


def make_display(stream: TextIO) -> Display:
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
