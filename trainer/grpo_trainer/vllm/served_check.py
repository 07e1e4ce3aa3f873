"""End-of-run proof that vLLM serves the adapter that is on the volume.

A hot-swapped adapter can silently be the wrong one: an in-place reload that
kept old weights, a stale name, a truncated file. The check scores one sampled
sequence three ways -- vLLM under the served name (prompt logprobs), the base
model with the adapter directory loaded from disk, and the base model alone --
and records the worst per-token gaps. Served == disk within float noise, and
disk != base by far more, means the weights vLLM serves are those on disk.
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


@dataclass(frozen=True)
class ServedCheck:
    adapter: str  # the name vLLM serves it under
    path: str  # the adapter directory on the volume
    tokens: int  # tokens scored
    served_vs_disk: float  # worst |logprob| gap between vLLM and the on-disk adapter
    base_vs_disk: float  # worst gap between the base model and the on-disk adapter: what the check can see

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def served_logprobs(
    base_url: str, name: str, token_ids: Sequence[int], timeout: float = 60.0, api_key: str | None = None
) -> list[float]:
    """vLLM's logprob of every token after the first, under model ``name`` (raw logits, temperature 1)."""
    body = {"model": name, "prompt": list(token_ids), "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.post(f"{base_url.rstrip('/')}/completions", json=body, headers=headers, timeout=timeout)
    response.raise_for_status()
    scored = response.json()["choices"][0]["prompt_logprobs"]
    return [float(scored[i][str(token_ids[i])]["logprob"]) for i in range(1, len(token_ids))]


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
    served = served_logprobs(base_url, name, token_ids, api_key=api_key)
    disk, base = disk_and_base_logprobs(model, adapter_dir, token_ids, device)
    check = ServedCheck(
        adapter=name,
        path=str(adapter_dir),
        tokens=len(served),
        served_vs_disk=max(abs(a - b) for a, b in zip(served, disk)),
        base_vs_disk=max(abs(a - b) for a, b in zip(base, disk)),
    )
    log.info("served adapter check", extra=check.as_dict())
    return check
