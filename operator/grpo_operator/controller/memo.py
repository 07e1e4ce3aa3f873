"""Reads that found something, remembered for a while; misses never are.

A running job's every resync would otherwise read its volume, ConfigMap,
Service, user claims and Secret again: at 500 jobs and a 10 s resync that was
200 GETs a second and a third of a core in the operator, with nothing changed.
What exists is trusted for a while (a child deleted by hand is recreated within
that time, not at once); what is missing is read again on every reconcile, so a
job waiting for a Secret or a claim starts as soon as it appears.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, Optional, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FoundMemo(Generic[K, V]):
    """``read`` results that are not None (and ``usable``), kept for ``seconds``; thread-safe."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()
        self._purged_at = clock()

    def get(self, key: K, read: Callable[[], Optional[V]], usable: Callable[[V], bool] = lambda _: True) -> Optional[V]:
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and self._clock() - hit[0] < self.seconds and usable(hit[1]):
            return hit[1]
        value = read()
        now = self._clock()
        with self._lock:
            if value is not None:
                self._items[key] = (now, value)
            else:
                self._items.pop(key, None)
            if now - self._purged_at >= self.seconds:  # deleted jobs' entries go too
                self._items = {k: v for k, v in self._items.items() if now - v[0] < self.seconds}
                self._purged_at = now
        return value

    def remember(self, key: K, value: V) -> None:
        """What was found without a read (a creation that succeeded, or met the object), kept as a read's."""
        with self._lock:
            self._items[key] = (self._clock(), value)

    def forget(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)
