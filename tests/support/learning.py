"""What "the embedded default learned" means in the tests, defined once from one recorded figure.

``bash bench/run.sh learning`` measures the spread of the default's validation score between
sampling seeds and writes it to bench/learning.json (and its table to bench/RESULTS.md). A
run that learns nothing still shows final − baseline varying by √2 times that spread (two
evaluations); the margin is MARGIN_SDS times that, so a pass is learning, not luck. The same
run records the gains of several training seeds, and how far the smallest clears the margin.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from grpo_trainer.contract.progress import Progress

FIGURE_FILE = Path(__file__).resolve().parents[2] / "bench" / "learning.json"
MARGIN_SDS = 4.0  # the gain must clear this many null standard deviations (one-sided p < 1e-4 if normal)


@dataclass(frozen=True)
class LearningFigure:
    """What bench/learning.py measured: the noise the tests' margin is made of, and the gains it saw."""

    steps: int  # the training steps the gains were measured at: a run held to the margin trains as many
    sampling_sd: float  # the base model's validation score across sampling seeds
    null_gain_sd: float  # final - baseline of a run that learns nothing: two such evaluations
    margin: float  # MARGIN_SDS * null_gain_sd
    gains: tuple[float, ...]  # final - baseline of each training run (seeds, modes)

    @classmethod
    def measured(cls, steps: int, scores: list[float], gains: list[float]) -> "LearningFigure":
        sampling = statistics.stdev(scores)
        null = math.sqrt(2) * sampling
        return cls(steps, sampling, null, MARGIN_SDS * null, tuple(gains))

    @property
    def clearance(self) -> float:
        """How many standard deviations of the gains the smallest gain lies above the margin."""
        spread = statistics.stdev(self.gains) if len(self.gains) > 1 else math.nan
        return (min(self.gains) - self.margin) / spread if spread else math.inf

    def write(self, path: Path = FIGURE_FILE) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path = FIGURE_FILE) -> "LearningFigure":
        doc = json.loads(path.read_text())
        return cls(doc["steps"], doc["sampling_sd"], doc["null_gain_sd"], doc["margin"], tuple(doc["gains"]))


def proof_steps() -> int:
    """How many steps a run held to the margin trains: as many as the recorded gains were measured at."""
    return LearningFigure.read().steps


def assert_served(run_dir: Path, steps: int, prefix: str = "", trainers_run_dir: Path | None = None) -> None:
    """vLLM served, at the end of the run, exactly the adapter the trainer left in ``run_dir`` after ``steps``
    steps, under the run's name for it (``prefix``: a job on a pool's, ``<job>-``); ``trainers_run_dir``: that
    directory where the trainer saw it (a pod's mount), when not ``run_dir``."""
    progress = Progress.read(run_dir)
    assert progress is not None and progress.served_check is not None, "the run recorded no served-adapter check"
    check = progress.served_check
    assert check["adapter"] == f"{prefix}policy-v{steps}", check
    assert Path(check["path"]) == (trainers_run_dir or run_dir) / "adapters" / f"step-{steps}", check
    assert check["served_vs_disk"] <= 1e-3, check
    assert check["base_vs_disk"] >= 50 * max(check["served_vs_disk"], 1e-4), "the check cannot tell adapters apart"


def assert_learned_and_served(run_dir: Path, adapter_prefix: str = "", trainers_run_dir: Path | None = None) -> None:
    """The finished run's validation gain clears the recorded margin, and vLLM served, at the end,
    exactly the adapter the trainer left on the volume (named ``<adapter_prefix>policy-vN``: a job on an
    inference pool prefixes its versions with its name). Read from the run's progress document, which a
    local run and a cluster job both leave in their run directory; ``trainers_run_dir``: that directory
    where the trainer saw it (a pod's mount), when not ``run_dir``."""
    figure = LearningFigure.read()
    steps = figure.steps
    progress = Progress.read(run_dir)
    assert progress is not None, f"no progress document in {run_dir}"
    assert progress.step == steps, f"the margin was measured at {steps} steps, the run trained {progress.step}"
    baseline, final = progress.baseline_val_score, progress.val_score
    assert baseline is not None and final is not None, f"validation scores missing: {baseline}, {final}"
    assert final - baseline >= figure.margin, (
        f"validation {baseline:.4f} -> {final:.4f} over {steps} steps: gain below {figure.margin:.3f} "
        f"({MARGIN_SDS:g} x the null noise {figure.null_gain_sd:.4f}, {FIGURE_FILE.name}); "
        f"scores {progress.val_scores}, rewards {progress.reward_means}"
    )
    assert_served(run_dir, steps, adapter_prefix, trainers_run_dir)
