"""The end-of-run report and the live display, from a synthetic progress document (unit tests)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import matplotlib.image
import pytest

from grpo_operator.local.display import BarDisplay, LineDisplay, format_duration
from grpo_operator.local.report import (
    best_adapter_path,
    summarize,
    summary_table,
    write_plot,
    write_summary,
)
from grpo_trainer.contract.progress import Progress, StepDiagnostics


def synthetic_progress(step: int = 10) -> Progress:
    start = datetime(2026, 11, 25, 6, 0, tzinfo=timezone.utc)
    return Progress(
        job="papillon-local",
        phase="done",
        step=step,
        max_steps=10,
        reward_mean=0.61,
        reward_std=0.12,
        reward_means={s: round(0.05 * s + 0.11, 3) for s in range(1, step + 1)},
        val_scores={0: 0.40, 5: 0.55, 10: 0.52},
        baseline_val_score=0.40,
        val_score=0.52,
        best_val_score=0.55,
        best_step=5,
        trained_predictors=["craft_redacted_request.predict", "respond_to_query"],
        tokens_generated=123456,
        tokens_trained=98765,
        diagnostics=StepDiagnostics(
            loss=-0.0123,
            grad_norm=0.4567,
            learning_rate=2e-5,
            clip_fraction=0.031,
            clip_fraction_low=0.011,
            clip_fraction_high=0.02,
            mean_kl=0.0042,
            mean_ratio=1.0011,
            mean_importance_weight=0.9987,
            zero_variance_group_share=0.25,
            completion_length_mean=87.5,
            completion_length_max=256,
        ),
        started_at=start,
        updated_at=start + timedelta(minutes=3, seconds=12),
        finished=True,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "adapters" / "step-5").mkdir(parents=True)
    (tmp_path / "adapters" / "best.json").write_text(json.dumps({"step": 5, "score": 0.55, "path": "step-5"}))
    return tmp_path


def test_summary_table_compares_baseline_final_and_best(run_dir: Path) -> None:
    summary = summarize(synthetic_progress(), run_dir, outcome="finished", wall_seconds=150.0)
    table = summary_table(summary, run_dir / "report.png")
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert "0.400" in lines["validation score, baseline"]
    assert "0.520 (+0.120)" in lines["validation score, final"]
    assert "0.550 (+0.150) at step 5" in lines["validation score, best"]
    assert "10 / 10" in lines["steps"]
    assert "2:30 this run" in lines["wall time"] and "3:12 since the trainer first started" in lines["wall time"]
    assert "123,456" in lines["tokens generated"]
    assert "craft_redacted_request.predict, respond_to_query" in lines["trained predictors"]
    assert summary.trained_predictors == ["craft_redacted_request.predict", "respond_to_query"]
    assert str(run_dir / "adapters" / "step-5") in lines["best adapter"]
    # the last update's diagnostics, as the trainer reported them
    assert "-0.0123, 0.4567" in lines["last step: loss, grad norm"]
    assert "3.1% (low 1.1%, high 2.0%)" in lines["last step: clipped tokens"]
    assert "0.0042, 1.0011 (importance weight 0.9987)" in lines["last step: KL, ratio"]
    assert "25%" in lines["last step: groups with no signal"]
    assert "mean 87.5, max 256" in lines["last step: completion tokens"]


def test_summary_table_without_a_trained_step_has_no_diagnostics(run_dir: Path) -> None:
    progress = synthetic_progress(0).model_copy(update={"diagnostics": None})
    table = summary_table(summarize(progress, run_dir, outcome="stopped", wall_seconds=1.0))
    assert "last step" not in table


def test_summary_json_and_plot_are_written(run_dir: Path) -> None:
    summary = summarize(synthetic_progress(), run_dir, outcome="finished", wall_seconds=150.0)
    doc = json.loads(write_summary(summary, run_dir).read_text())
    assert doc["best_val_score"] == 0.55 and doc["baseline_val_score"] == 0.40
    assert doc["best_adapter"] == str(run_dir / "adapters" / "step-5")
    assert doc["val_scores"] == {"0": 0.40, "5": 0.55, "10": 0.52}
    assert doc["reward_means"] == {str(s): round(0.05 * s + 0.11, 3) for s in range(1, 11)}  # the trainer's own
    assert doc["last_step_diagnostics"]["clip_fraction_high"] == 0.02

    png = write_plot(summary, run_dir / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] >= 500 and pixels.shape[1] >= 700  # 8x6 inches at 100 dpi
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_best_adapter_is_none_before_any_adapter_won(tmp_path: Path) -> None:
    assert best_adapter_path(tmp_path) is None
    # a step scored best but grpo.checkpoint none kept no best adapter: not "the base model"
    table = summary_table(summarize(synthetic_progress(), tmp_path, outcome="finished", wall_seconds=1.0))
    assert "- (not kept: checkpoint none)" in table


def test_line_display_prints_one_line_per_change() -> None:
    out = io.StringIO()
    display = LineDisplay(out)
    p = synthetic_progress(3).model_copy(update={"phase": "train", "eta_seconds": 95.0})
    display.update(p)
    display.update(p)  # unchanged: no new line
    display.update(p.model_copy(update={"step": 4}))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "3/10" in lines[0] and "reward 0.610±0.120" in lines[0] and "val 0.520 (best 0.550 @5)" in lines[0]
    assert "ETA 1:35" in lines[0]
    assert "4/10" in lines[1]


def test_bar_display_shows_step_reward_and_scores_and_keeps_messages_on_lines_of_their_own() -> None:
    out = io.StringIO()
    display = BarDisplay(out)
    display.update(synthetic_progress(5).model_copy(update={"max_steps": 10}))
    display.message("INFO vLLM restarted")
    display.update(synthetic_progress(6).model_copy(update={"max_steps": 10}))
    display.close()
    text = out.getvalue()
    assert "5/10" in text and "6/10" in text and "reward 0.610" in text and "val 0.520 (best 0.550)" in text
    assert "\nINFO vLLM restarted\n" in text or text.startswith("INFO vLLM restarted\n") or "\rINFO vLLM restarted\n" in text
    assert text.endswith("\n")


def test_format_duration() -> None:
    assert format_duration(None) == "--:--"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
