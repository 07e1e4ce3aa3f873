"""The run's result on its volume: what a user, a pipeline or an export takes away.

    <run_dir>/result/
        adapter/       the best adapter by validation score, a PEFT folder (vLLM's
                       ``--lora-modules``, ``PeftModel.from_pretrained``); absent while the
                       base model scores best
        program.json   the student program's DSPy state (``Module.load`` reads it), its LMs
                       left out: the LM to use is the adapter, served or loaded, and an LM's
                       state may hold an endpoint's key
        result.json    the RunResult (contract.progress) plus the job, the scores by step,
                       the code's identity, the trained predictors, the checkpoint mode and,
                       with grpo.checkpoint improvements, every improving adapter kept in adapters/
        README.md      a short model card: what it is and how to use it

Which adapter is the result follows grpo.checkpoint, as Arbor's: the best by validation
(single-best, improvements) or the last step's (none). Written at each new best
validation score (not with none) and once more when the run finishes, each time replaced
as a whole (staged, then renamed), so whoever reads it -- the operator,
an export, a user after a crash -- finds a complete result of the best step so far.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from grpo_trainer.contract.hparams import CheckpointMode
from grpo_trainer.contract.progress import RESULT_ADAPTER_DIR, RESULT_DIR, RESULT_FILE, Progress, RunResult
from grpo_trainer.dspy.state import PROGRAM_FILE, program_state
from grpo_trainer.run.atomic import staged_dir
from grpo_trainer.vllm.adapters import ADAPTERS_DIR, AdapterStore, ScoredAdapter, step_dir_name

log = logging.getLogger(__name__)

ADAPTER_DIR = RESULT_ADAPTER_DIR.removeprefix(f"{RESULT_DIR}/")
CARD_FILE = "README.md"


def model_card(result: RunResult, progress: Progress, job: str, checkpoint: CheckpointMode) -> str:
    baseline = progress.baseline_val_score
    scored = f"{result.val_score:.4f}" if result.val_score is not None else "not measured"
    which = "the last step's" if checkpoint == "none" else "the best by validation"
    adapter = (
        f"`{ADAPTER_DIR}/` (step {result.step}, {which})" if result.adapter else "none: the base model scored best"
    )
    lines = [
        f"# {job}: GRPO-trained LoRA adapter",
        "",
        f"- base model: `{result.base_model}`",
        f"- adapter: {adapter}",
        f"- validation score: {scored}" + (f" (before training: {baseline:.4f})" if baseline is not None else ""),
        f"- steps trained: {progress.step} of {progress.max_steps}" + ("" if result.finished else " (run in progress)"),
    ]
    if progress.trained_predictors:
        lines.append(f"- trained predictors: {', '.join(progress.trained_predictors)}")
    if progress.code:
        lines.append(f"- code: {progress.code}")
    if result.adapter:
        lines += [
            "",
            f"Serve it: `vllm serve <base model> --enable-lora --lora-modules {job}=<this folder>/{ADAPTER_DIR}`.",
            "Load it: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<base model>), "
            f"'<this folder>/{ADAPTER_DIR}')`.",
        ]
    lines += ["", f"The program's DSPy state: `{PROGRAM_FILE}` (`program.load(...)` on the same program class).", ""]
    return "\n".join(lines)


def keep_best(store: AdapterStore, checkpoint: CheckpointMode, step: int, score: float) -> None:
    """What a new best validation score of step ``step``'s adapter keeps on the volume, by grpo.checkpoint:
    single-best points ``adapters/best.json`` at it, improvements also keeps it for good, none keeps nothing."""
    if checkpoint == "none":
        return
    store.set_best(step, score)
    if checkpoint == "improvements":
        store.keep_improvement(step, score)


def result_adapter(
    checkpoint: CheckpointMode, store: AdapterStore, progress: Progress
) -> tuple[Optional[ScoredAdapter], Optional[float]]:
    """The adapter that is the run's result (None: the base model) and, when it is None, the base model's score.

    The best by validation, or with grpo.checkpoint none the last step's (validated: the last step always is).
    """
    if checkpoint == "none":
        last = progress.step
        if last:
            return ScoredAdapter(last, progress.val_scores[last], store.path(last)), None
        return None, progress.val_scores.get(0)
    best = store.best() if progress.best_step else None
    return best, None if best is not None else progress.best_val_score


def write_result(
    run_dir: Path,
    *,
    job: str,
    base_model: str,
    adapter: Optional[ScoredAdapter],
    base_score: Optional[float],
    program: Any,
    progress: Progress,
    finished: bool,
    checkpoint: CheckpointMode = "single-best",
    improvements: Sequence[ScoredAdapter] = (),
) -> RunResult:
    """Replace ``<run_dir>/result`` with ``adapter`` (None: the base model, scoring ``base_score``) and what
    describes it; ``improvements``: the adapters grpo.checkpoint improvements keeps."""
    result = RunResult(
        path=RESULT_DIR,
        adapter=RESULT_ADAPTER_DIR if adapter is not None else None,
        step=adapter.step if adapter is not None else 0,
        val_score=adapter.score if adapter is not None else base_score,
        base_model=base_model,
        finished=finished,
    )
    doc = {
        **result.model_dump(mode="json"),
        "job": job,
        "steps": progress.step,
        "max_steps": progress.max_steps,
        "baseline_val_score": progress.baseline_val_score,
        "val_scores": {str(k): v for k, v in progress.val_scores.items()},
        "code": progress.code,
        "trained_predictors": progress.trained_predictors,
        "checkpoint": checkpoint,
        "improvements": [
            {"step": a.step, "score": a.score, "adapter": f"{ADAPTERS_DIR}/{step_dir_name(a.step)}"}
            for a in improvements
        ],
    }
    with staged_dir(run_dir / RESULT_DIR) as staging:
        if adapter is not None:
            shutil.copytree(adapter.path, staging / ADAPTER_DIR)
        (staging / PROGRAM_FILE).write_text(json.dumps(program_state(program), indent=2) + "\n")
        (staging / RESULT_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        (staging / CARD_FILE).write_text(model_card(result, progress, job, checkpoint))
    log.info("result written", extra={"result": result.model_dump(mode="json")})
    return result
