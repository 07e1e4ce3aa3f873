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
from grpo_trainer.run.result import RESULT_DIR, write_result
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
        tmp_path, job="papillon", base_model=str(model_dir), best=best, best_score=0.71,
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
        tmp_path, job="papillon", base_model=str(model_dir), best=None, best_score=0.5,
        program=student(), progress=progress, finished=True,
    )  # fmt: skip
    assert (again.adapter, again.step, again.val_score, again.finished) == (None, 0, 0.5, True)
    assert not (folder / "adapter").exists()
    assert "none: the base model scored best" in (folder / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind
