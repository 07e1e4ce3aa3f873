"""The whole trainer process against a real vLLM (CPU build): steps, adapters, hot-swap, exact resume,
and a checkpoint the volume cannot take.

The trainer runs as its own process (`python -m grpo_trainer.run.main`), exactly as in the
trainer pod, on the tiny generated model; the PAPILLON program's untrusted model is
the same vLLM's base model through the OpenAI-compatible client path. The full volume is
the narrow seam of tests/support/fsync_faults.py (os.fsync failing with ENOSPC for one
checkpoint's files).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from grpo_operator.resolve import trainer_command
from grpo_trainer.contract import exit_codes
from grpo_trainer.contract.hparams import CheckpointMode, GRPOArgs, TrainKwargs
from grpo_trainer.dspy.programs.papillon import CRAFT, RESPOND
from support.fsync_faults import trainer_command as faulty_trainer_command
from support.ranks import alive, rank_pids
from support.vllm import trainer_config_for

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _config(
    server,
    run_dir: Path,
    steps: int,
    *,
    threads: int = 4,
    examples: int = 2,
    val_every: int = 100,
    overlap: bool = True,
    checkpoint: CheckpointMode = "single-best",
) -> Path:
    cfg = trainer_config_for(
        server,
        run_dir,
        "loop-test",
        GRPOArgs(
            num_train_steps=steps,
            num_dspy_examples_per_grpo_step=examples,
            num_samples_per_input=4,
            num_threads=threads,
            num_steps_for_val=val_every,
            constrain_output_format=True,
            keep_checkpoints=10,
            overlap_rollouts=overlap,
            checkpoint=checkpoint,
        ),
        TrainKwargs(
            learning_rate=5e-3,
            max_completion_length=128,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=1,
            lr_scheduler_type="constant",
            log_completions=True,
            max_steps=100,
            num_training_gpus=0,
            num_inference_gpus=0,
        ),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "trainer-config.json"
    path.write_text(cfg.to_json())
    return path


def _start(config: Path, log: Path, ranks: int = 1, fsync_fault: tuple[str, int] | None = None) -> subprocess.Popen:
    """The trainer as its pod runs it: one process, or ``ranks`` data-parallel ones under the launcher.

    ``fsync_fault``: (path regex, errno) of files whose fsync fails (one process only).
    """
    env = {**os.environ, "GRPO_LOG_FORMAT": "json", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = trainer_command(ranks, config_path=str(config), python=sys.executable)  # the pod's command
    if fsync_fault is not None:
        assert ranks == 1
        cmd = faulty_trainer_command(config, *fsync_fault)
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=config.parent)


def _run(config: Path, log: Path, timeout: float = 900, ranks: int = 1) -> None:
    proc = _start(config, log, ranks)
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def _watch_served_versions(server, run_dir: Path, proc: subprocess.Popen) -> list[int]:
    """Poll vLLM's /v1/models while the trainer runs; the versions of this run it listed, in order."""
    seen: list[int] = []
    with httpx.Client(timeout=10) as client:
        while proc.poll() is None:
            try:
                models = client.get(f"{server.openai_url}/models").json()["data"]
            except httpx.HTTPError:
                models = []
            for model in models:
                match = re.fullmatch(r"policy-v(\d+)", model["id"])
                if match and str(run_dir) in (model.get("root") or "") and int(match.group(1)) not in seen:
                    seen.append(int(match.group(1)))
            time.sleep(0.1)
    return seen


def _progress(run_dir: Path) -> dict:
    return json.loads((run_dir / "progress.json").read_text())


def test_three_steps_make_three_served_adapter_versions_through_a_full_volume(vllm_server, tmp_path):
    """Three steps, each adapter served in turn. The volume refuses step 2's checkpoint (ENOSPC on fsync):
    the run says so and goes on from step 1's, which stands, and the step-3 checkpoint is written."""
    server = vllm_server
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = _start(
        _config(server, run_dir, steps=3, checkpoint="none"),
        tmp_path / "trainer.log",
        fsync_fault=(r"/checkpoints/\.staging-step-2-[0-9a-f]+/", errno.ENOSPC),
    )
    seen = _watch_served_versions(server, run_dir, proc)
    assert proc.wait(timeout=900) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    seconds = time.monotonic() - started

    progress = _progress(run_dir)
    assert progress["step"] == 3 and progress["phase"] == "done" and progress["finished"]
    assert progress["adapter_version"] == "policy-v3"
    assert set(progress["reward_means"]) == {"1", "2", "3"}
    assert progress["tokens_trained"] > 0, "no group had reward variance: nothing was trained"
    assert progress["trained_predictors"] == [CRAFT, RESPOND]
    # checkpoint none (Arbor's): no best adapter kept; the result is the last step's, whatever scored best
    result = json.loads((run_dir / "result" / "result.json").read_text())
    assert (result["checkpoint"], result["step"], result["adapter"]) == ("none", 3, "result/adapter")
    assert result["val_score"] == progress["val_scores"]["3"] and not (run_dir / "adapters" / "best.json").exists()
    for step in (1, 2, 3):
        adapter = run_dir / "adapters" / f"step-{step}"
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == server.served_name
        assert (adapter / "adapter_model.safetensors").is_file()
    # vLLM loaded each version in turn, and serves the last one now
    assert seen == [1, 2, 3], f"vLLM served these versions of this run, in this order: {seen}"
    served = {m["id"]: m.get("root") for m in httpx.get(f"{server.openai_url}/models").json()["data"]}
    assert served["policy-v3"] == str(run_dir / "adapters" / "step-3")
    # the trainer's own end-of-run check: vLLM's logprobs under policy-v3 are those of the adapter on disk
    check = progress["served_check"]
    assert (check["adapter"], check["path"]) == ("policy-v3", str(run_dir / "adapters" / "step-3")), check
    assert check["served_vs_disk"] <= 1e-3 < check["base_vs_disk"], check
    # adapters differ step to step: training happened
    w1 = load_file(run_dir / "adapters" / "step-1" / "adapter_model.safetensors")
    w3 = load_file(run_dir / "adapters" / "step-3" / "adapter_model.safetensors")
    assert any(float((w1[k] - w3[k]).abs().max()) > 0 for k in w1)

    # the checkpoint the volume refused: not there, reported, and the run went on
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1", "step-3"]
    assert (progress["checkpoint_failures"], progress["checkpoint_step"], progress["checkpoint_error"]) == (1, 3, None)
    (failed,) = [json.loads(line) for line in (tmp_path / "trainer.log").read_text().splitlines()
                 if '"checkpoint failed' in line]  # fmt: skip
    assert failed["step"] == 2 and failed["previous_checkpoint"] == 1 and "No space left on device" in failed["error"]
    print(f"checkpoint 2 refused (ENOSPC): run went on from checkpoint 1 to step {progress['step']}, "
          f"checkpoints on disk {sorted(p.name for p in (run_dir / 'checkpoints').iterdir())}, {seconds:.0f} s")


@pytest.mark.timeout(1800)  # two 4-step runs: ~3 min on a quiet machine, far more on a loaded one
def test_kill_9_of_one_rank_and_resume_gives_the_same_adapter_as_a_straight_run(vllm_server, tmp_path):
    """3 ranks, 4 steps straight vs 2 steps, SIGKILL of rank 1 during step 3, resume to 4: equal weights (1e-6).

    Three data-parallel ranks under the pod's launcher (gloo), as the seed's 3-GPU
    trainer runs: the dead rank ends the attempt at once (the launcher kills the others
    and exits 1), and the next attempt resumes every rank from the step-2 checkpoint.
    It replays a whole step (3) and one more (4) on the restored optimizer, scheduler
    and RNG states, so both the checkpointed state and the state carried past it must
    match. Sequential (no overlap: a prefetched request could share a vLLM batch with
    a publish's check request, which changes float results) and one rollout at a time
    (num_threads=1), so vLLM batches are identical in both runs; the resumed run reloads
    the adapter names of the straight run in place on the shared server, which is
    harmless exactly when the weights are equal. Both runs log their completions, so a
    failure shows the first step whose sampling differed.
    """
    server = vllm_server
    straight = tmp_path / "straight"
    _run(_config(server, straight, steps=4, threads=1, examples=1, overlap=False), tmp_path / "straight.log", ranks=3)

    resumed = tmp_path / "resumed"
    config = _config(server, resumed, steps=4, threads=1, examples=1, overlap=False)
    log = tmp_path / "resumed.log"
    proc = _start(config, log, ranks=3)
    marker = resumed / "checkpoints" / "step-2" / "COMPLETE"
    deadline = time.monotonic() + 900
    while not marker.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no step-2 checkpoint"
        time.sleep(0.05)
    ranks = rank_pids(proc.pid)
    assert sorted(ranks) == [0, 1, 2], ranks
    os.kill(ranks[1], signal.SIGKILL)
    assert proc.wait(timeout=60) == exit_codes.FAILED, "a dead rank must fail the attempt"
    assert not any(alive(pid) for pid in ranks.values()), "ranks outlived their attempt"
    assert not (resumed / "checkpoints" / "step-4").exists()

    _run(config, log, ranks=3)
    assert "resumed from checkpoint" in log.read_text()
    progress = _progress(resumed)
    assert progress["step"] == 4 and progress["phase"] == "done"
    assert progress["baseline_val_score"] == _progress(straight)["baseline_val_score"]

    def completions(run: Path) -> dict[int, list[str]]:
        by_step: dict[int, list[str]] = {}
        for line in (run / "logs" / "completions.jsonl").read_text().splitlines():
            row = json.loads(line)
            by_step.setdefault(row["step"], []).append(row["completion"])
        return by_step

    ours, theirs = completions(straight), completions(resumed)
    # a step the killed process had logged is logged again by the resumed one: compare the last lines
    differing = [step for step, texts in ours.items() if theirs.get(step, [])[-len(texts) :] != texts]
    assert not differing, f"the runs sampled differently at steps {differing}"

    a = load_file(straight / "adapters" / "step-4" / "adapter_model.safetensors")
    b = load_file(resumed / "adapters" / "step-4" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"rank 1 SIGKILLed in step 3 of 4, resumed from step 2: step-4 adapter max |diff| {worst:.1e} from the straight run")
    assert worst <= 1e-6, f"resumed run drifted from the straight run by {worst}"
