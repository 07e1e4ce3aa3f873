"""Graceful stop: SIGTERM/SIGINT ask the run to stop at the next step boundary.

Kept free of heavy imports so the trainer installs it before torch and DSPy load:
a signal during start-up then stops the run instead of killing it.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """Set by a signal; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        log.warning("signal %s: stopping after the current step", signal.Signals(signum).name)
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()
