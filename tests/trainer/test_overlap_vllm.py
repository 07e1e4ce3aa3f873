"""Overlapped rollouts (grpo.overlap_rollouts) in the whole trainer process against a real vLLM (CPU).

One run, three trainer processes: stopped by SIGTERM after step 1's checkpoint,
restarted, killed with SIGKILL after step 3's, resumed to the end. Every step must have been
sampled by the adapter one step behind (vLLM names the model that answered each
completion), and the examples of the steps, across both interruptions, must be
the sampler's stream exactly once: a prefetched batch that was never trained is
neither lost nor counted twice.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from grpo_trainer.contract import exit_codes
from grpo_trainer.contract.config import TrainerConfig
from grpo_trainer.grpo.prefetch import sampling_version
from grpo_trainer.grpo.rollout import ExampleSampler
from trainer.test_loop_vllm import (  # the same trainer set-up as the sequential loop test
    _config,
    _progress,
    _run,
    _start,
)

# Three trainer start-ups and five steps: a few minutes when the machine is shared.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

STEPS = 4
EXAMPLES = 1


def _overlap_config(server, run_dir: Path) -> Path:
    path = _config(server, run_dir, steps=STEPS, threads=4, examples=EXAMPLES, val_every=3)
    cfg = TrainerConfig.load(path)
    cfg = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"overlap_rollouts": True})})
    path.write_text(cfg.to_json())
    return path


def _wait_for(path: Path, proc, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _completions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / "completions.jsonl").read_text().splitlines()]


def test_overlap_samples_one_step_behind_and_survives_stop_and_kill(vllm_server, tmp_path):
    server = vllm_server
    run_dir = tmp_path / "run"
    config = _overlap_config(server, run_dir)
    log = tmp_path / "trainer.log"

    # SIGTERM while step 2 trains (step 3 is being prefetched): stop after a checkpoint, exit "interrupted".
    proc = _start(config, log)
    _wait_for(run_dir / "checkpoints" / "step-1" / "COMPLETE", proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == exit_codes.INTERRUPTED, log.read_text()[-3000:]
    stopped = _progress(run_dir)
    assert stopped["phase"] == "stopped" and 1 <= stopped["step"] < STEPS

    # Restart; SIGKILL once step 3 is checkpointed (step 4 sampled on policy-v2, not trained).
    proc = _start(config, log)
    _wait_for(run_dir / "checkpoints" / "step-3" / "COMPLETE", proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    _run(config, log)
    text = log.read_text()
    assert text.count("resumed from checkpoint") == 2
    progress = _progress(run_dir)
    assert progress["step"] == STEPS and progress["phase"] == "done" and progress["finished"]
    assert progress["adapter_version"] == f"policy-v{STEPS}"
    assert set(progress["reward_means"]) == {str(s) for s in range(1, STEPS + 1)}
    timings = progress["timings"]
    assert timings["rollout"] > 0 and timings["train"] > 0 and timings["step"] > 0
    assert timings["rollout_wait"] is not None and timings["forward_backward"] > 0

    rows = _completions(run_dir)
    # Every completion of step s was answered by vLLM under the adapter one step behind,
    # in every process (a step re-sampled after an interruption included).
    wrong = {(r["step"], r["adapter"]) for r in rows if r["adapter"] != _expected_adapter(server, r["step"])}
    assert not wrong, f"steps sampled by the wrong adapter: {sorted(wrong)}"
    assert {r["adapter"] for r in rows} == {server.served_name, *(f"policy-v{v}" for v in range(1, STEPS - 1))}

    # The examples of the trained steps are the sampler's stream, each batch exactly once. A step
    # logged by two processes (sampled, interrupted, re-sampled) was drawn at the same stream position.
    train_file = Path(TrainerConfig.load(config).train_data.path)
    stream = ExampleSampler(sum(1 for line in train_file.read_text().splitlines() if line.strip()), seed=0)
    expected = {step: sorted(stream.next_batch(EXAMPLES)) for step in range(1, STEPS + 1)}
    logged: dict[int, set[int]] = {}
    for r in rows:
        logged.setdefault(r["step"], set()).add(r["example"])
    assert {step: sorted(examples) for step, examples in logged.items()} == expected


def _expected_adapter(server, step: int) -> str:
    version = sampling_version(step, overlap=True)
    return f"policy-v{version}" if version else server.served_name
