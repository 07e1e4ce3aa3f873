"""The seed's architecture in vLLM: adapters of a tiny Qwen2 hot-swapped and served exactly as on disk.

Qwen2.5 differs from the Llama the other tests use where a LoRA server can go wrong:
biases on q/k/v (random here, so dropping them shows) and an output head tied to the
input embeddings. The trainer's own policy (``load_policy``, LoRA r=8 on all seven
projections) is saved by the trainer's store, published by its sync, and vLLM's
logprobs under each served version must be those of the adapter on disk (the
trainer's end-of-run check), while the base model's differ by far more.
The rollout path on this model is covered by test_rollout_vllm.py (parametrized).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.policy import load_policy
from grpo_trainer.vllm.adapters import AdapterStore, VLLMAdapterSync, version_name
from grpo_trainer.vllm.served_check import Continuation, check_served_adapter, served_continuation
from support.vllm import VLLMServer

pytestmark = [pytest.mark.vllm]

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _randomize_lora_b(model: torch.nn.Module, seed: int) -> None:
    """LoRA B starts at zero (the adapter is the base model): give a version outputs of its own."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def test_qwen2_adapters_on_all_projections_hot_swap_and_serve_as_on_disk(
    qwen2_vllm_server: VLLMServer, tmp_path: Path
) -> None:
    server = qwen2_vllm_server
    train = TrainKwargs(lora_config={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0})
    assert sorted(train.lora_config.target_modules) == sorted(SEVEN)
    policy = load_policy(str(server.model_dir), train, "cpu")
    assert policy.model.base_model.model.config.tie_word_embeddings
    store = AdapterStore(tmp_path, base_model_name=server.served_name)
    sync = VLLMAdapterSync(server.openai_url, str(store.root), max_loras=server.max_loras, wait_timeout_seconds=60)

    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    messages = [{"role": "user", "content": "please write an email to maria garcia about the appointment"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(token_ids) > 10

    served: dict[int, Continuation] = {}
    for step, seed in ((1, 1), (2, 2)):
        _randomize_lora_b(policy.model, seed)
        store.save(policy.model, step)
        published = sync.publish(step)
        assert published.name == version_name(step)
        check = check_served_adapter(
            policy.model, policy.device, server.openai_url, version_name(step), store.path(step), token_ids
        )
        assert check.served_vs_disk <= 1e-3, check
        assert check.base_vs_disk >= 50 * max(check.served_vs_disk, 1e-4), f"the check cannot tell them apart: {check}"
        served[step] = served_continuation(server.openai_url, version_name(step), token_ids)
    # the previous version stays loaded beside the new one, with its own weights
    again = served_continuation(server.openai_url, version_name(1), token_ids)
    assert again.token_ids == served[1].token_ids
    assert max(abs(a - b) for a, b in zip(again.logprobs, served[1].logprobs)) <= 1e-4
    first, second = served[1], served[2]
    assert first.token_ids != second.token_ids or max(abs(a - b) for a, b in zip(first.logprobs, second.logprobs)) > 1e-2
