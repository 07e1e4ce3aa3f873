"""What "the embedded default learned" means in the tests, defined once.

The margin is several times the spread of the default's step-0 validation score between
sampling seeds (``NOISE``, measured by ``bash bench/run.sh learning``), so a pass is
learning, not luck.
"""

from __future__ import annotations

import json
from pathlib import Path

from grpo_trainer.contract.progress import Progress

# Standard deviation of the default's step-0 validation score over 6 sampling seeds
# (bench/RESULTS.md, section "learning": 0.0082 on the 64 validation rows). Gains measured
# there: sequential +0.105, overlapped +0.083 and +0.108.
NOISE = 0.0082
MARGIN = 5 * NOISE


def assert_learned_and_served(run_dir: Path, steps: int) -> None:
    """The finished run's validation gain clears MARGIN, and vLLM served, at the end, exactly
    the adapter the trainer left on the volume."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == steps
    baseline, final = summary["baseline_val_score"], summary["final_val_score"]
    assert final - baseline >= MARGIN, (
        f"validation {baseline:.4f} -> {final:.4f} over {steps} steps: gain below {MARGIN:.3f} "
        f"(noise {NOISE}); scores {summary['val_scores']}, rewards {summary['reward_means']}"
    )
    progress = Progress.read(run_dir)
    assert progress is not None and progress.served_check is not None, "the run recorded no served-adapter check"
    check = progress.served_check
    assert check["adapter"] == f"policy-v{steps}"
    assert Path(check["path"]) == run_dir / "adapters" / f"step-{steps}"
    assert check["served_vs_disk"] <= 1e-3, check
    assert check["base_vs_disk"] >= 50 * max(check["served_vs_disk"], 1e-4), "the check cannot tell adapters apart"
