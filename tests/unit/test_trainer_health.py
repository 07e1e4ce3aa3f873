"""The trainer's GET /health: what the kubelet's startup and liveness probes of the trainer pod call."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from grpo_operator.resolve import HEALTH_PATH
from grpo_trainer.run.progress_board import ProgressBoard
from grpo_trainer.run.progress_server import ProgressServer


def test_health_answers_ok_even_while_the_board_is_busy(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path, "job", max_steps=3)
    with ProgressServer(board, 0, host="127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}{HEALTH_PATH}"
        # a step updating the progress document holds the board's lock
        with board._lock, urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as resp:
            assert resp.status == 200 and b'"status": "ok"' in resp.read()
