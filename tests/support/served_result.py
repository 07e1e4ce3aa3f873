"""That what a ``dspy.LM`` on a job's served result calls is the best adapter on the job's volume.

The same proof the trainer makes at the end of a run (grpo_trainer.vllm.served_check), made from
the outside on the result: one sequence scored by the server under the LM's model name, by the base
model with ``result/adapter`` loaded from disk, and by the bare base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def assert_serves_result(
    lm: Any,
    run_dir: Path,
    text: str = "Write a short request without names or addresses.",
    base_model: Path | None = None,
) -> None:
    """``base_model``: where the base model is here, when the job named it by a path inside its pods."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_trainer.vllm.served_check import check_served_adapter

    result = json.loads((run_dir / "result" / "result.json").read_text())
    assert result["adapter"], "the base model scored best: there is no adapter to serve"
    base = str(base_model or result["base_model"])
    token_ids = AutoTokenizer.from_pretrained(base)(text)["input_ids"]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(run_dir / "result" / "adapter")
    )
    name = lm.model.removeprefix("openai/")
    check = check_served_adapter(
        model, torch.device("cpu"), lm.kwargs["api_base"], name, run_dir / "result" / "adapter", token_ids,
        api_key=lm.kwargs.get("api_key"),  # the job's key: its server refuses a request without it
    )
    assert check.served_vs_disk <= 1e-3, check
    assert check.base_vs_disk >= 50 * max(check.served_vs_disk, 1e-4), (
        f"the check cannot tell the adapter apart: {check}"
    )
