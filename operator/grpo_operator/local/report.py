"""The end of a local run: a summary table, ``summary.json`` and ``report.png``.

Everything comes from the trainer's own progress document (its per-step rewards and
validation scores survive resumes: the trainer restores the document from its
checkpoint), so the report never re-derives what the trainer already recorded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from grpo_operator.local.display import format_duration
from grpo_trainer.contract.progress import Progress, StepDiagnostics
from grpo_trainer.run.atomic import write_text_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
PLOT_FILE = "report.png"
BEST_POINTER = "adapters/best.json"  # written by the trainer (grpo_trainer.vllm.adapters); read without importing torch

TABLE_MAX_WIDTH = 100

Outcome = Literal["finished", "stopped", "failed"]


@dataclass(frozen=True)
class Summary:
    """What a finished (or stopped, or failed) run achieved; ``summary.json`` is this."""

    job: str
    outcome: Outcome
    run_dir: str
    steps: int
    max_steps: int
    baseline_val_score: Optional[float]
    final_val_score: Optional[float]
    best_val_score: Optional[float]
    best_step: Optional[int]
    best_adapter: Optional[str]
    wall_seconds: float
    total_seconds: float
    tokens_generated: int
    tokens_trained: int
    error: Optional[str] = None
    val_scores: dict[int, float] = field(default_factory=dict)
    reward_means: dict[int, float] = field(default_factory=dict)
    last_step_diagnostics: Optional[dict[str, float]] = None  # StepDiagnostics of the last step, as JSON
    result_dir: Optional[str] = None  # the run's result/ (grpo_trainer.run.result), once written
    trained_predictors: list[str] = field(default_factory=list)  # the ones the local model drives

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def best_adapter_path(run_dir: Path) -> Optional[Path]:
    """The adapter the trainer marked best (``adapters/best.json``), if any."""
    pointer = run_dir / BEST_POINTER
    try:
        doc = json.loads(pointer.read_text(encoding="utf-8"))
        return pointer.parent / str(doc["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize(progress: Progress, run_dir: Path, *, outcome: Outcome, wall_seconds: float) -> Summary:
    adapter = best_adapter_path(run_dir)
    return Summary(
        job=progress.job,
        outcome=outcome,
        run_dir=str(run_dir),
        steps=progress.step,
        max_steps=progress.max_steps,
        baseline_val_score=progress.baseline_val_score,
        final_val_score=progress.val_score,
        best_val_score=progress.best_val_score,
        best_step=progress.best_step,
        best_adapter=str(adapter) if adapter is not None else None,
        wall_seconds=round(wall_seconds, 3),
        total_seconds=round((progress.updated_at - progress.started_at).total_seconds(), 3),
        tokens_generated=progress.tokens_generated,
        tokens_trained=progress.tokens_trained,
        error=progress.error,
        val_scores=dict(sorted(progress.val_scores.items())),
        reward_means=dict(sorted(progress.reward_means.items())),
        last_step_diagnostics=progress.diagnostics.model_dump() if progress.diagnostics is not None else None,
        result_dir=str(run_dir / progress.result.path) if progress.result is not None else None,
        trained_predictors=list(progress.trained_predictors),
    )


def _score(value: Optional[float], baseline: Optional[float] = None) -> str:
    if value is None:
        return "-"
    if baseline is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({value - baseline:+.3f})"


def _diagnostic_rows(doc: Optional[dict[str, float]]) -> list[tuple[str, str]]:
    """The last update as a GRPO practitioner checks it: is it learning, clipping, drifting, starved of signal?"""
    if doc is None:
        return []
    d = StepDiagnostics.model_validate(doc)
    return [
        ("last step: loss, grad norm", f"{d.loss:.4f}, {d.grad_norm:.4f} (learning rate {d.learning_rate:.2e})"),
        (
            "last step: clipped tokens",
            f"{d.clip_fraction:.1%} (low {d.clip_fraction_low:.1%}, high {d.clip_fraction_high:.1%})",
        ),
        (
            "last step: KL, ratio",
            f"{d.mean_kl:.4f}, {d.mean_ratio:.4f} (importance weight {d.mean_importance_weight:.4f})",
        ),
        ("last step: groups with no signal", f"{d.zero_variance_group_share:.0%}"),
        ("last step: completion tokens", f"mean {d.completion_length_mean:.1f}, max {d.completion_length_max}"),
    ]


def summary_table(s: Summary, plot: Optional[Path] = None) -> str:
    """A two-column plain-text table of the summary."""
    best = _score(s.best_val_score, s.baseline_val_score)
    if s.best_step is not None:
        best += f" at step {s.best_step}"
    rows = [
        ("job", s.job),
        ("outcome", s.outcome),
        ("trained predictors", ", ".join(s.trained_predictors) or "-"),
        ("steps", f"{s.steps} / {s.max_steps}"),
        ("validation score, baseline", _score(s.baseline_val_score)),
        ("validation score, final", _score(s.final_val_score, s.baseline_val_score)),
        ("validation score, best", best),
        (
            "wall time",
            f"{format_duration(s.wall_seconds)} this run ({format_duration(s.total_seconds)} since the trainer first started)",
        ),
        ("tokens generated", f"{s.tokens_generated:,}"),
        ("tokens trained", f"{s.tokens_trained:,}"),
        *_diagnostic_rows(s.last_step_diagnostics),
        ("best adapter", s.best_adapter or ("- (not kept: checkpoint none)" if s.best_step else "- (the base model)")),
        ("run directory", s.run_dir),
    ]
    if s.result_dir is not None:
        rows.append(("result", f"{s.result_dir} (best adapter, program state, model card)"))
    if plot is not None:
        rows.append(("plot", str(plot)))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    rule = "-" * min(TABLE_MAX_WIDTH, width + 2 + max(len(v) for _, v in rows))
    return "\n".join([rule, *lines, rule])


def write_summary(s: Summary, run_dir: Path) -> Path:
    path = run_dir / SUMMARY_FILE
    write_text_atomic(path, s.to_json())
    return path


def _readable_y(ax: "Axes") -> None:
    """No offset notation, and a visible band around a flat curve (a tiny model's first steps often are)."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    low, high = ax.get_ylim()
    if high - low < 0.02:
        middle = (low + high) / 2
        ax.set_ylim(middle - 0.1, middle + 0.1)


def write_plot(s: Summary, path: Path) -> Path:
    """Reward mean per step and validation score per step, one panel each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_reward, ax_val) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    try:
        ax_val.xaxis.set_major_locator(MaxNLocator(integer=True))
        if s.reward_means:
            steps = sorted(s.reward_means)
            ax_reward.plot(steps, [s.reward_means[k] for k in steps], marker=".", color="tab:blue")
        ax_reward.set_ylabel("mean rollout reward")
        ax_reward.set_title(f"{s.job}: {s.outcome} after {s.steps}/{s.max_steps} steps")
        ax_reward.grid(alpha=0.3)
        if s.val_scores:
            steps = sorted(s.val_scores)
            ax_val.plot(steps, [s.val_scores[k] for k in steps], marker="o", color="tab:green", label="validation")
        if s.baseline_val_score is not None:
            ax_val.axhline(s.baseline_val_score, linestyle="--", color="gray", label="baseline (step 0)")
        if s.best_step is not None and s.best_val_score is not None:
            ax_val.plot([s.best_step], [s.best_val_score], marker="*", markersize=14, color="tab:orange", label="best")
        for ax in (ax_reward, ax_val):
            _readable_y(ax)
        ax_val.set_xlabel("step")
        ax_val.set_ylabel("validation score")
        ax_val.grid(alpha=0.3)
        if ax_val.get_legend_handles_labels()[0]:
            ax_val.legend(loc="best")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path
