"""The progress document (file + /progress) and the Prometheus /metrics of a trainer."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from grpo_trainer.contract.progress import PROGRESS_FILE, TERMINATION_MESSAGE_BYTES, Progress, termination_message
from grpo_trainer.run.progress_board import ProgressBoard
from grpo_trainer.run.progress_server import ProgressServer


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def metric(text: str, line_start: str) -> float:
    """Value of the sample line starting with ``line_start`` (name plus labels)."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in /metrics")


def run_one_step(board: ProgressBoard, step: int) -> None:
    with board.timed("rollout"):
        time.sleep(0.01)
    board.record_timings(reward=0.02)
    with board.timed("train"):
        pass
    board.record_timings(save=0.1, load=0.004, first_request=0.015)
    board.adapter(step, f"policy-v{step}")
    board.step_done(
        step,
        reward_mean=0.25 * step,
        reward_std=0.1,
        tokens_generated=100,
        tokens_trained=80,
        rollout_failures={"format": 2, "external": 1} if step == 1 else {"format": 1},
        skipped_groups=3,
    )


def test_each_steps_update_diagnostics_reach_progress_metrics_and_the_tracker(tmp_path: Path) -> None:
    """Clip fractions, KL, grad norm, importance weight, zero-variance share, completion lengths: every step."""
    from grpo_trainer.grpo.update import UpdateStats
    from grpo_trainer.run.loop import step_diagnostics, tracker_metrics

    stats = UpdateStats(
        loss=0.12, grad_norm=3.5, tokens=800, sequences=32, clip_fraction=0.07, clip_fraction_low=0.03,
        clip_fraction_high=0.04, mean_ratio=1.01, mean_kl=0.002, mean_is_weight=0.98, lr=2e-5,
        optimizer_steps=2, seconds=1.0,
    )  # fmt: skip
    info = {"reward_mean": 0.6, "reward_std": 0.2, "zero_variance_group_share": 0.25,
            "completion_length_mean": 41.5, "completion_length_max": 96}  # fmt: skip
    diagnostics = step_diagnostics(stats, info)
    board = ProgressBoard(tmp_path, job="demo", max_steps=5)
    with ProgressServer(board, port=0, host="127.0.0.1") as server:
        board.step_done(1, reward_mean=0.6, reward_std=0.2, diagnostics=diagnostics)
        doc = json.loads(get(server.port, "/progress")[2])["diagnostics"]
        assert doc["clip_fraction_low"] == 0.03 and doc["clip_fraction_high"] == 0.04 and doc["grad_norm"] == 3.5
        assert doc["mean_importance_weight"] == 0.98 and doc["zero_variance_group_share"] == 0.25
        text = get(server.port, "/metrics")[2]
    assert metric(text, 'grpo_trainer_clip_fraction{side="low"}') == 0.03
    assert metric(text, 'grpo_trainer_clip_fraction{side="high"}') == 0.04
    assert metric(text, "grpo_trainer_grad_norm") == 3.5 and metric(text, "grpo_trainer_kl_mean") == 0.002
    assert metric(text, "grpo_trainer_learning_rate") == 2e-5 and metric(text, "grpo_trainer_loss") == 0.12
    assert metric(text, "grpo_trainer_importance_weight_mean") == 0.98
    assert metric(text, "grpo_trainer_zero_variance_group_share") == 0.25
    assert metric(text, 'grpo_trainer_completion_length_tokens{stat="max"}') == 96
    logged = tracker_metrics(diagnostics, info)  # TRL's GRPOTrainer keys
    assert logged["train/clip_ratio/low_mean"] == 0.03 and logged["train/kl"] == 0.002
    assert logged["train/frac_reward_zero_std"] == 0.25 and logged["train/completions/max_length"] == 96
    assert logged["train/grad_norm"] == 3.5 and logged["train/reward"] == 0.6


def test_progress_and_metrics_show_the_step_after_an_update(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path, job="demo", max_steps=5)
    with ProgressServer(board, port=0, host="127.0.0.1") as server:
        status, ctype, body = get(server.port, "/progress")
        assert status == 200 and ctype == "application/json"
        assert json.loads(body)["phase"] == "starting" and json.loads(body)["step"] == 0

        board.set_phase("baseline")
        assert board.validation(0, 0.40, baseline=True) is True
        run_one_step(board, 1)
        run_one_step(board, 2)
        board.set_phase("validate")
        assert board.validation(2, 0.55) is True
        assert board.validation(2, 0.50) is False  # a worse score does not move the best

        doc = json.loads(get(server.port, "/progress")[2])
        assert doc["step"] == 2 and doc["max_steps"] == 5 and doc["phase"] == "validate"
        assert doc["reward_mean"] == 0.5 and doc["reward_std"] == 0.1
        assert doc["val_scores"] == {"0": 0.4, "2": 0.5}
        assert (doc["baseline_val_score"], doc["val_score"], doc["best_val_score"], doc["best_step"]) == (0.4, 0.5, 0.55, 2)
        assert doc["adapter_version"] == "policy-v2" and doc["adapter_step"] == 2
        assert doc["tokens_generated"] == 200 and doc["tokens_trained"] == 160
        assert doc["rollout_failures"] == {"format": 3, "external": 1} and doc["skipped_groups"] == 6
        assert doc["timings"]["rollout"] >= 0.01 and doc["timings"]["load"] == 0.004 and doc["timings"]["validate"] is None
        assert doc["eta_seconds"] is not None and doc["eta_seconds"] > 0
        # the local runner reads the same document from the volume
        assert json.loads((tmp_path / PROGRESS_FILE).read_text()) == doc

        status, ctype, text = get(server.port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert metric(text, "grpo_trainer_step") == 2
        assert metric(text, "grpo_trainer_reward_mean") == 0.5
        assert metric(text, "grpo_trainer_val_score") == 0.5
        assert metric(text, "grpo_trainer_best_val_score") == 0.55
        assert metric(text, "grpo_trainer_adapter_version") == 2
        assert metric(text, "grpo_trainer_tokens_generated_total") == 200
        assert metric(text, "grpo_trainer_tokens_trained_total") == 160
        assert metric(text, 'grpo_trainer_rollout_failures_total{kind="format"}') == 3
        assert metric(text, 'grpo_trainer_rollout_failures_total{kind="external"}') == 1
        assert metric(text, "grpo_trainer_skipped_groups_total") == 6
        assert metric(text, 'grpo_trainer_phase_seconds_count{phase="rollout"}') == 2
        assert metric(text, 'grpo_trainer_phase_seconds_count{phase="first_request"}') == 2
        assert metric(text, 'grpo_trainer_phase{phase="validate"}') == 1
        assert metric(text, 'grpo_trainer_phase{phase="train"}') == 0

        status, _, body = get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert get(server.port, "/nope")[0] == 404

        board.finish()
        doc = json.loads(get(server.port, "/progress")[2])
        assert doc["finished"] is True and doc["phase"] == "done" and doc["eta_seconds"] == 0
        assert metric(get(server.port, "/metrics")[2], "grpo_trainer_finished") == 1


def test_resumed_board_keeps_history_and_totals(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path, job="demo", max_steps=4)
    board.validation(0, 0.3, baseline=True)
    run_one_step(board, 1)
    board.loaded_adapters(["policy-v1"])
    board.fail("killed")

    previous = Progress.read(tmp_path)
    assert previous is not None and previous.phase == "failed" and previous.error == "killed"
    assert previous.loaded_adapters == ["policy-v1"]
    resumed = ProgressBoard(tmp_path, job="demo", max_steps=4, initial=previous)
    # what vLLM served for the earlier attempt is not this one's to report (a restarted server lost it)
    assert resumed.snapshot().phase == "starting" and resumed.snapshot().loaded_adapters == []
    with ProgressServer(resumed, port=0, host="127.0.0.1") as server:
        run_one_step(resumed, 2)
        doc = json.loads(get(server.port, "/progress")[2])
        text = get(server.port, "/metrics")[2]
    assert doc["step"] == 2 and doc["error"] is None and doc["finished"] is False
    assert doc["baseline_val_score"] == 0.3 and doc["tokens_generated"] == 200
    assert doc["started_at"] == previous.model_dump(mode="json")["started_at"]
    # counters start from the run totals of the restored document, not from zero
    assert metric(text, "grpo_trainer_tokens_generated_total") == 200


def test_unknown_phase_is_refused(tmp_path: Path) -> None:
    board = ProgressBoard(tmp_path, job="demo", max_steps=1)
    with pytest.raises(ValueError, match="unknown phase"):
        board.set_phase("training")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown timed phases"):
        board.record_timings(sync=1.0)


def test_termination_message_carries_the_final_numbers_the_operator_reads(tmp_path: Path) -> None:
    """What the operator turns into status when the trainer pod ends (it may have missed the last poll)."""
    from datetime import datetime, timezone

    from grpo_operator.controller.progress_poll import progress_status

    board = ProgressBoard(tmp_path, job="demo", max_steps=2)
    board.trained_predictors(["classify", "review.predict"])
    board.validation(0, 0.40, baseline=True)
    for step in (1, 2):
        run_one_step(board, step)
    board.validation(2, 0.55)
    board.finish()
    text = termination_message(board.snapshot())
    fields = progress_status(json.loads(text), datetime.now(timezone.utc))
    assert fields["step"] == 2 and fields["progressPercentage"] == 100  # max_steps carried
    assert fields["valScore"] == 0.55 and fields["baselineValScore"] == 0.40 and fields["bestStep"] == 2
    assert fields["trainReward"] == 0.5 and fields["adapterVersion"] == "policy-v2"
    assert fields["trainedPredictors"] == ["classify", "review.predict"]

    board.fail("RuntimeError: " + "x" * 10_000)  # a long traceback still fits Kubernetes' 4 KiB
    text = termination_message(board.snapshot())
    doc = json.loads(text)
    assert len(text.encode()) <= TERMINATION_MESSAGE_BYTES and doc["error"].startswith("RuntimeError: xxx")
    assert doc["phase"] == "failed" and doc["step"] == 2

    board.trained_predictors([f"stage{i}.{'deeply_nested_' * 8}predict" for i in range(40)])  # ~5 KB of names
    text = termination_message(board.snapshot())
    doc = json.loads(text)  # the names (read from /progress all along) give way to the error
    assert len(text.encode()) <= TERMINATION_MESSAGE_BYTES and "trained_predictors" not in doc
    assert doc["error"].startswith("RuntimeError: xxx") and doc["step"] == 2


def test_a_failed_runs_error_carries_no_secret_into_progress_or_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error quoting a key (an HTTP 401 echoing its headers) is published with the key redacted."""
    monkeypatch.setenv("HF_TOKEN", "hf_0123456789abcdefSECRET")
    board = ProgressBoard(tmp_path, job="demo", max_steps=2)
    board.fail("HTTPError: 401 for https://hub/api (Authorization: Bearer hf_0123456789abcdefSECRET)")
    published = (tmp_path / PROGRESS_FILE).read_text() + termination_message(board.snapshot())
    assert "hf_0123456789abcdefSECRET" not in published
    assert "Authorization: Bearer [REDACTED]" in Progress.read(tmp_path).error  # type: ignore[union-attr]
