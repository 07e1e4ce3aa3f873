"""The embedded default learns: ``grpo-local``, real vLLM (CPU build), the real trainer.

The whole loop -- rollouts, rewards, LoRA update, adapter on the volume, vLLM
hot-swap, better rollouts -- must raise the validation score, measured through
vLLM with the newest adapter on the bundled validation examples the trainer never
trains on, by several times the score's noise (tests/support/learning.py). Here with
rollouts overlapped with training (one step off-policy, the default on GPUs); the
embedded default as it runs on a CPU (sequential steps, no job file) is held to the same
margin by tests/local/test_local_e2e.py, through a killed vLLM and a Ctrl-C with resume
(one run for both: CI time).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grpo_operator.local.default import NUM_TRAIN_STEPS
from support.learning import assert_learned_and_served

# 4.5-9 min on a quiet 2-core machine; the limit leaves room for a loaded one
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]


def test_the_embedded_default_overlapped_learns_and_serves_the_adapter_on_disk(
    cli,
    default_doc: dict[str, Any],
    write_job: Callable[..., Path],
    tmp_path: Path,
    ports: tuple[int, int],
    survivors: Callable[[], list[str]],
) -> None:
    run_dir = tmp_path / "run"
    # validated at the start and the end only (what is asserted): one validation pass less
    default_doc["spec"]["grpo"].update(overlap_rollouts=True, num_steps_for_val=NUM_TRAIN_STEPS)
    args = [str(write_job(default_doc)), "--run-dir", str(run_dir), "--port", str(ports[0]),
            "--trainer-port", str(ports[1])]
    result = cli(*args, timeout=2300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert survivors() == []
    assert_learned_and_served(run_dir, NUM_TRAIN_STEPS)
