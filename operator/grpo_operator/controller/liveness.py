"""``/healthz``: red when the operator's workers are wedged, so the kubelet restarts it.

An endpoint that only proves the event loop answers (Kopf's own) stays green
while every reconcile worker is stuck, and the kubelet never restarts an
operator whose jobs have all frozen. The work queue and the progress poller each
report what they hold; a pool is wedged when one item has been in hand longer
than the limit, or when items wait and none has been taken or finished for that
long. An idle pool (nothing waiting, nothing in hand) is never wedged. The
endpoint is served from the event loop, so a blocked loop fails it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Optional

from aiohttp import web

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


def stall(
    pool: str,
    in_hand: Mapping[Hashable, float],
    waiting: int,
    last_progress: float,
    now: float,
    limit: float,
) -> Optional[str]:
    """Why ``pool`` is wedged, or None.

    ``in_hand``: item -> monotonic time it was taken; ``waiting``: items not yet
    taken; ``last_progress``: when an item was last taken or finished.
    """
    if in_hand:
        item, since = min(in_hand.items(), key=lambda kv: kv[1])
        if now - since > limit:
            return f"{pool}: {item} in hand for {now - since:.0f} s (limit {limit:g} s)"
    if waiting and now - last_progress > limit:
        idle = now - last_progress
        return f"{pool}: {waiting} waiting and none taken or finished for {idle:.0f} s (limit {limit:g} s)"
    return None


Check = Callable[[], tuple[list[str], dict[str, Any]]]  # () -> (why wedged, what is in hand)


async def serve_health(port: int, check: Check) -> web.AppRunner:
    """Serve ``GET /healthz`` on ``port``: 200 and the pools' counts, or 503 naming the wedged pools."""

    async def healthz(_: web.Request) -> web.Response:
        problems, counts = check()
        if problems:
            log.error("unhealthy: %s", "; ".join(problems), extra={"problems": problems})
            return web.json_response({"healthy": False, "problems": problems, **counts}, status=503)
        return web.json_response({"healthy": True, **counts})

    app = web.Application()
    app.router.add_get(HEALTH_PATH, healthz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
