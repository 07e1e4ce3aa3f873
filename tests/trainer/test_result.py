"""The run's result/ folder: what a user takes away loads as it says (a real PEFT adapter on the
tiny generated model, a real DSPy program state), and holds no endpoint key."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from grpo_trainer.contract.progress import Progress
from grpo_trainer.embedded.tinymodel import ensure_tiny_model
from grpo_trainer.run.result import RESULT_DIR, keep_best, result_adapter, write_result
from grpo_trainer.vllm.adapters import AdapterStore

SECRET = "sk-the-policy-endpoints-key"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_tiny_model()


def trained(model_dir: Path, seed: int) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def student() -> dspy.Module:
    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question="2+2?", answer="4")]
    program.lm = dspy.LM("openai/policy-v2", api_base="http://vllm:8000/v1", api_key=SECRET)
    return program


def test_result_holds_the_best_adapter_the_program_and_a_card_and_is_replaced_whole(
    model_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path, base_model_name="base")
    models = {step: trained(model_dir, seed=step) for step in (1, 2)}
    for step, model in models.items():
        store.save(model, step)
    best = store.set_best(2, 0.71)
    progress = Progress(job="papillon", max_steps=10, step=3, baseline_val_score=0.5, val_scores={0: 0.5, 2: 0.71})
    result = write_result(
        tmp_path, job="papillon", base_model=str(model_dir), adapter=best, base_score=0.5,
        program=student(), progress=progress, finished=False,
    )  # fmt: skip
    folder = tmp_path / RESULT_DIR
    assert (result.path, result.adapter, result.step, result.val_score, result.finished) == (
        "result", "result/adapter", 2, 0.71, False,
    )  # fmt: skip
    assert json.loads((folder / "result.json").read_text())["val_scores"] == {"0": 0.5, "2": 0.71}

    # the adapter is step 2's and loads with PEFT onto the base: the same logits as the trained model
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), folder / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, models[2](ids).logits, atol=1e-5)
        assert not torch.allclose(loaded(ids).logits, models[1](ids).logits, atol=1e-3)

    # the program's state loads into the same program class; no LM, so no key, anywhere in result/
    fresh = dspy.Predict("question -> answer")
    fresh.load(str(folder / "program.json"))
    assert [d["answer"] for d in fresh.demos] == ["4"] and fresh.lm is None
    assert not any(SECRET in p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())
    card = (folder / "README.md").read_text()
    assert str(model_dir) in card and "step 2" in card and "0.7100" in card and "(before training: 0.5000)" in card

    # the base model scores best (no adapter yet): result/ is replaced whole, nothing of step 2 is left
    again = write_result(
        tmp_path, job="papillon", base_model=str(model_dir), adapter=None, base_score=0.5,
        program=student(), progress=progress, finished=True,
    )  # fmt: skip
    assert (again.adapter, again.step, again.val_score, again.finished) == (None, 0, 0.5, True)
    assert not (folder / "adapter").exists()
    assert "none: the base model scored best" in (folder / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


# Validation scores of a run of 4 steps: steps 1 and 3 improve on the best before them, 4 does not.
SCORES = {0: 0.40, 1: 0.50, 2: 0.45, 3: 0.60, 4: 0.55}


def validated_run(store: AdapterStore, checkpoint: str, model_dir: Path) -> Progress:
    """What the loop does at each validation: a new best keeps what the checkpoint mode says; the store prunes."""
    progress = Progress(job="papillon", max_steps=4, baseline_val_score=SCORES[0], val_scores={0: SCORES[0]})
    progress.best_val_score, progress.best_step = SCORES[0], 0
    model = trained(model_dir, seed=0)
    for step in range(1, 5):
        store.save(model, step)
        progress.step, progress.val_scores[step] = step, SCORES[step]
        if SCORES[step] > progress.best_val_score:
            progress.best_val_score, progress.best_step = SCORES[step], step
            keep_best(store, checkpoint, step, SCORES[step])  # type: ignore[arg-type]
        store.prune(keep_last=1)
    return progress


@pytest.mark.parametrize(
    ("checkpoint", "kept", "result_step", "improvements"),
    [
        ("single-best", [3, 4], 3, []),  # the best (3) and the newest
        ("improvements", [1, 3, 4], 3, [1, 3]),  # every improvement too
        ("none", [4], 4, []),  # no best adapter: the result is the last step's
    ],
)
def test_checkpoint_modes_keep_what_arbors_keep(
    checkpoint: str, kept: list[int], result_step: int, improvements: list[int], model_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path, base_model_name="base")
    progress = validated_run(store, checkpoint, model_dir)
    assert store.steps() == kept
    adapter, _ = result_adapter(checkpoint, store, progress)  # type: ignore[arg-type]
    assert adapter is not None and (adapter.step, adapter.score) == (result_step, SCORES[result_step])
    result = write_result(
        tmp_path, job="papillon", base_model=str(model_dir), adapter=adapter, base_score=None, program=student(),
        progress=progress, finished=True, checkpoint=checkpoint, improvements=store.improvements(),  # type: ignore[arg-type]
    )  # fmt: skip
    doc = json.loads((tmp_path / RESULT_DIR / "result.json").read_text())
    assert (result.step, doc["checkpoint"]) == (result_step, checkpoint)
    assert [(i["step"], i["adapter"]) for i in doc["improvements"]] == [(s, f"adapters/step-{s}") for s in improvements]
    assert all((tmp_path / i["adapter"] / "adapter_model.safetensors").is_file() for i in doc["improvements"])
    if checkpoint == "none":
        assert store.best() is None and "the last step's" in (tmp_path / RESULT_DIR / "README.md").read_text()


def test_an_improvement_redone_after_a_resume_is_kept_once(model_dir: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, base_model_name="base")
    store.save(trained(model_dir, seed=0), 2)
    keep_best(store, "improvements", 2, 0.5)
    keep_best(store, "improvements", 2, 0.52)  # step 2 again, after a resume from step 1
    assert [(a.step, a.score) for a in store.improvements()] == [(2, 0.52)]


def test_before_any_step_the_result_is_the_base_model_in_every_mode(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, base_model_name="base")
    progress = Progress(job="papillon", max_steps=4, val_scores={0: 0.4}, best_val_score=0.4, best_step=0)
    for checkpoint in ("single-best", "improvements", "none"):
        assert result_adapter(checkpoint, store, progress) == (None, 0.4)  # type: ignore[arg-type]
