"""TRL's GRPOTrainer as the reference for our loss: shared by tests/unit/test_loss_trl.py and bench/gpu_check.py.

TRL's own ``GRPOTrainer._compute_loss`` is called directly on a batch we lay out
the way its training loop would (left-padded prompts, right-padded completions).
Two attributes only exist inside TRL's loop or with a live vLLM and are set here:
``current_gradient_accumulation_steps`` and ``use_vllm`` (which, in
``_compute_loss``, only switches on the multiplication by the
``importance_sampling_ratio`` passed in the inputs).

Imports only torch, transformers, tokenizers, datasets and trl (no dspy, no vLLM
client), so the GPU check can carry it to a machine with few packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from grpo_trainer.grpo.samples import TrainSample


def word_tokenizer(vocab_size: int, pad: int = 0, eos: int = 2, bos: int = 3) -> PreTrainedTokenizerFast:
    """A word-level tokenizer ``t0 … t{vocab_size-1}``: GRPOTrainer needs a processing class, never its text."""
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t1"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=f"t{pad}", eos_token=f"t{eos}", bos_token=f"t{bos}")


def grpo_trainer(
    model: PreTrainedModel,
    out: Path,
    tokenizer: PreTrainedTokenizerFast,
    peft_config: Any,
    *,
    per_device_train_batch_size: int,
    num_generations: int,
    gradient_accumulation_steps: int,
    use_cuda: bool = False,
    use_vllm_ratio: bool = False,
    **config: Any,
) -> GRPOTrainer:
    """A real GRPOTrainer on ``model`` with ``peft_config``, ready for direct ``_compute_loss`` calls.

    ``use_cuda``: bf16 autocast on the GPU (TRL's default there); otherwise CPU in
    fp32 (GRPOConfig defaults to bf16, which would autocast on CPU too).
    ``use_vllm_ratio``: apply the ``importance_sampling_ratio`` given in the inputs.
    """
    args = GRPOConfig(
        output_dir=str(out),
        report_to="none",
        use_cpu=not use_cuda,
        bf16=use_cuda,
        per_device_train_batch_size=per_device_train_batch_size,
        num_generations=num_generations,
        gradient_accumulation_steps=gradient_accumulation_steps,
        **config,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["t5 t6"] * num_generations}),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = gradient_accumulation_steps
    trainer.use_vllm = use_vllm_ratio
    return trainer


def trl_layout(
    samples: Sequence[TrainSample], pad_id: int, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """TRL's batch layout: left-padded prompts, right-padded completions, the sampler's logprobs, advantages."""
    p_width = max(len(s.prompt_ids) for s in samples)
    t_width = max(len(s.completion_ids) for s in samples)
    b = len(samples)
    out = {
        "prompt_ids": torch.full((b, p_width), pad_id),
        "prompt_mask": torch.zeros((b, p_width), dtype=torch.long),
        "completion_ids": torch.full((b, t_width), pad_id),
        "completion_mask": torch.zeros((b, t_width), dtype=torch.long),
        "sampling_per_token_logps": torch.zeros((b, t_width)),
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
    }
    for i, s in enumerate(samples):
        n_p, n_c = len(s.prompt_ids), len(s.completion_ids)
        out["prompt_ids"][i, p_width - n_p :] = torch.tensor(s.prompt_ids)
        out["prompt_mask"][i, p_width - n_p :] = 1
        out["completion_ids"][i, :n_c] = torch.tensor(s.completion_ids)
        out["completion_mask"][i, :n_c] = 1
        out["sampling_per_token_logps"][i, :n_c] = torch.tensor(s.sampler_logprobs, dtype=torch.float32)
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def trl_scores(trainer: GRPOTrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """TRL's own per-token logprobs of the completions (no gradient): its old logprobs under vLLM IS correction."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, batch["completion_ids"].size(1)
        )
    return logps
