"""End-of-run proof that vLLM serves the adapter that is on the volume.

A hot-swapped adapter can silently be the wrong one: an in-place reload that
kept old weights, a stale name, a truncated file. The check has vLLM continue one
sampled sequence greedily under the served name, and scores the tokens it wrote three
ways -- vLLM's own logprobs, the base model with the adapter directory loaded from
disk, and the base model alone -- and records the worst per-token gaps. Served ==
disk within float noise, and disk != base by far more, means the weights vLLM serves
are those on disk.

vLLM's logprobs of the tokens it generates, not of the prompt's (``prompt_logprobs``):
with LoRA, vLLM maps the logits' adapter per sequence, not per prompt token, so prompt
logprobs are right only for a request alone in its batch; beside other requests (on an
inference pool, another job's rollouts) its CPU build's engine dies on them
("einsum(): subscript b has size 5 ... 372"), and on GPUs an lm_head adapter's delta is
dropped (vLLM issues #17766, #51594). Generated tokens are mapped per sequence.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx
import torch

from grpo_trainer.vllm.adapters import unwrap_model

log = logging.getLogger(__name__)

CHECK_ADAPTER = "served-check"
CHECK_TOKENS = 32  # tokens vLLM writes after the sampled sequence, each scored three ways


@dataclass(frozen=True)
class ServedCheck:
    adapter: str  # the name vLLM serves it under
    path: str  # the adapter directory on the volume
    tokens: int  # tokens scored
    served_vs_disk: float  # worst |logprob| gap between vLLM and the on-disk adapter
    base_vs_disk: float  # worst gap between the base model and the on-disk adapter: what the check can see

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Continuation:
    """What vLLM wrote after a prompt, greedily, and its logprob of each token."""

    token_ids: list[int]
    logprobs: list[float]


def served_continuation(
    base_url: str,
    name: str,
    prompt_ids: Sequence[int],
    max_tokens: int = CHECK_TOKENS,
    timeout: float = 60.0,
    api_key: str | None = None,
) -> Continuation:
    """vLLM's greedy continuation of ``prompt_ids`` under model ``name``: ``max_tokens`` tokens (end of
    sequence ignored) and their logprobs (raw logits, as vLLM reports by default)."""
    body = {
        "model": name,
        "prompt": list(prompt_ids),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logprobs": 0,
        "ignore_eos": True,
        "return_tokens_as_token_ids": True,
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.post(f"{base_url.rstrip('/')}/completions", json=body, headers=headers, timeout=timeout)
    response.raise_for_status()
    scored = response.json()["choices"][0]["logprobs"]
    ids = [int(str(token).removeprefix("token_id:")) for token in scored["tokens"]]
    return Continuation(ids, [float(lp) for lp in scored["token_logprobs"]])


@torch.no_grad()
def _sequence_logprobs(model: Any, token_ids: Sequence[int], device: torch.device) -> list[float]:
    ids = torch.tensor([list(token_ids)], device=device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0].tolist()


def disk_and_base_logprobs(model: Any, adapter_dir: Path, token_ids: Sequence[int], device: torch.device) -> tuple[list[float], list[float]]:
    """Logprobs under the adapter loaded from ``adapter_dir`` and under the bare base (the policy's own adapter is untouched)."""
    peft_model = unwrap_model(model)
    active = peft_model.active_adapter
    was_training = peft_model.training
    peft_model.eval()
    peft_model.load_adapter(str(adapter_dir), adapter_name=CHECK_ADAPTER)
    try:
        peft_model.set_adapter(CHECK_ADAPTER)
        disk = _sequence_logprobs(peft_model, token_ids, device)
        with peft_model.disable_adapter():
            base = _sequence_logprobs(peft_model, token_ids, device)
    finally:
        peft_model.set_adapter(active)
        peft_model.delete_adapter(CHECK_ADAPTER)
        peft_model.train(was_training)
    return disk, base


def check_served_adapter(
    model: Any,
    device: torch.device,
    base_url: str,
    name: str,
    adapter_dir: Path,
    token_ids: Sequence[int],
    api_key: str | None = None,
) -> ServedCheck:
    """``token_ids``: a sequence the policy sampled (its prompt and completion), continued by vLLM."""
    served = served_continuation(base_url, name, token_ids, api_key=api_key)
    sequence = list(token_ids) + served.token_ids
    disk, base = disk_and_base_logprobs(model, adapter_dir, sequence, device)
    tail = len(served.token_ids)  # the positions vLLM wrote: the last of the sequence's logprobs
    disk, base = disk[-tail:], base[-tail:]
    check = ServedCheck(
        adapter=name,
        path=str(adapter_dir),
        tokens=tail,
        served_vs_disk=max(abs(a - b) for a, b in zip(served.logprobs, disk)),
        base_vs_disk=max(abs(a - b) for a, b in zip(base, disk)),
    )
    log.info("served adapter check", extra=check.as_dict())
    return check
