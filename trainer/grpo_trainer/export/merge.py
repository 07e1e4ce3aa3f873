"""merged/: the base model with the result's adapter merged into its weights (PEFT's merge_and_unload),
saved as safetensors with its tokenizer and a model card, loadable without PEFT.

The base model is read where the trainer left it: a directory (a model volume), or the hub cache of
the job's volume for a hub id (``local_files_only``: the export never downloads it again).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

CARD_FILE = "README.md"


def merged_card(job: str, base_model: str, step: Optional[int], adapter: bool) -> str:
    what = (
        f"the GRPO-trained LoRA adapter of step {step} merged into its weights"
        if adapter
        else ("unchanged: the base model scored best, there was no adapter to merge")
    )
    return "\n".join(
        [
            f"# {job}: merged model",
            "",
            f"`{base_model}` with {what}.",
            "",
            "Load it: `AutoModelForCausalLM.from_pretrained('<this folder>')`; serve it: `vllm serve <this folder>`.",
            "",
        ]
    )


def merge(base_model: str, adapter_dir: Optional[Path], out: Path, *, job: str, step: Optional[int]) -> None:
    """Write the merged model into ``out`` (a new folder)."""
    import torch  # the export pod loads torch only to merge
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_only = not Path(base_model).is_dir()  # a hub id: from the cache only
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto", local_files_only=local_only)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with torch.no_grad():
        model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model, local_files_only=local_only).save_pretrained(out)
    (out / CARD_FILE).write_text(merged_card(job, base_model, step, adapter_dir is not None), encoding="utf-8")
    log.info("merged", extra={"base_model": base_model, "adapter": str(adapter_dir), "out": str(out)})
