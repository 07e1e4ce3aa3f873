"""A tiny random Llama built in-process, for tests of the optimisation code (no tokenizer, no vLLM)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, *, vocab_size: int = 200, layers: int = 2, max_positions: int = 128) -> LlamaForCausalLM:
    """Deterministic for its arguments: the same seed gives the same base weights."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(cfg)
