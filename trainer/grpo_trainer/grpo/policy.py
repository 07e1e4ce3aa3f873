"""The trained policy: a causal LM with a PEFT LoRA adapter, and its token logprobs.

Sequences are right-padded (prompt + completion + pad), so every real token has
the position ids vLLM gave it, with no left-padding position bookkeeping. Logprobs
come from TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): it
projects through the head in vocabulary tiles and recomputes them in backward, so
the (B, L, vocab) logits never exist, and it applies the sampling temperature and
the model family's own logit scaling/soft-capping — the same numbers TRL trains on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from grpo_trainer.contract.hparams import TrainKwargs
from grpo_trainer.grpo.samples import TrainSample

log = logging.getLogger(__name__)

VLLM_LOG_LEVEL_ENV = "VLLM_LOGGING_LEVEL"


def _import_fused_lm_head() -> Callable[..., object]:
    """TRL's fused head, without what importing TRL does to this process's environment: it sets
    ``VLLM_LOGGING_LEVEL=ERROR`` where unset (trl/_compat.py), and every vLLM server started afterwards from
    this process or its children then logged errors only (adapter loads, warnings and start-up were missing
    from vllm.log: a notebook's served result, every local run started from a test session)."""
    unset = VLLM_LOG_LEVEL_ENV not in os.environ
    try:
        from trl.trainer.utils import add_fused_lm_head
    finally:
        if unset:
            os.environ.pop(VLLM_LOG_LEVEL_ENV, None)
    return add_fused_lm_head


add_fused_lm_head = _import_fused_lm_head()

DeviceChoice = Literal["auto", "cpu", "cuda"]


@dataclass
class Policy:
    """The PEFT model plus how to run it (device, autocast dtype, fp16's gradient scaler)."""

    model: PeftModel
    device: torch.device
    autocast_dtype: Optional[torch.dtype]  # None: run in the weights' dtype (fp32 on CPU)
    # fp16 only: float16's range is narrow, so the loss is scaled up before backward and a step
    # with overflowing gradients is skipped (torch.amp.GradScaler, as transformers' Trainer does).
    grad_scaler: Optional[torch.amp.GradScaler] = None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


@dataclass(frozen=True)
class Batch:
    """A right-padded micro-batch; (B, L) for the sequence, (B, T) for its completion part."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_positions: torch.Tensor  # index in input_ids of each completion token
    completion_mask: torch.Tensor
    sampler_logps: torch.Tensor
    advantages: torch.Tensor
    truncated: torch.Tensor


def resolve_device(choice: DeviceChoice | str = "auto") -> torch.device:
    """cuda means this process's current GPU (init_distributed selects cuda:LOCAL_RANK)."""
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def peft_lora_config(train: TrainKwargs) -> PeftLoraConfig:
    lc = train.lora_config
    return PeftLoraConfig(
        r=lc.r,
        lora_alpha=lc.lora_alpha,
        lora_dropout=lc.lora_dropout,
        target_modules=list(lc.target_modules),
        bias=lc.bias,
        use_rslora=lc.use_rslora,
        use_dora=lc.use_dora,
        modules_to_save=lc.modules_to_save,
        task_type="CAUSAL_LM",
    )


def prepare_base(base: PreTrainedModel, temperature: float) -> PreTrainedModel:
    """Give ``base`` the fused LM head ``token_logprobs`` calls; must happen before PEFT wraps it."""
    add_fused_lm_head(base, temperature=temperature)
    return base


def mixed_precision(train: TrainKwargs, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype bf16/fp16 ask for (the base model loads in it); None on a CPU, where both are ignored."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if train.bf16 else torch.float16 if train.fp16 else None


def wrap_policy(base: PreTrainedModel, train: TrainKwargs, device: torch.device) -> Policy:
    """Attach a fresh LoRA adapter to ``base`` (already on ``device``) and prepare it for training.

    PEFT keeps the adapter's weights in float32 under a bf16/fp16 base, so fp16's
    scaler unscales float32 gradients.
    """
    autocast_dtype = mixed_precision(train, device)
    if (train.bf16 or train.fp16) and autocast_dtype is None:
        log.info("bf16/fp16 ignored on %s: training in float32", device.type)
    head = base.get_output_embeddings()
    head_names = {name.rsplit(".", 1)[-1] for name, module in base.named_modules() if module is head}
    if head_names & {t.rsplit(".", 1)[-1] for t in train.lora_config.target_modules}:
        # The fused head multiplies by the head's own weight: an adapter there would be silently ignored.
        raise ValueError(f"LoRA on the output head {sorted(head_names)} is not supported; remove it from target_modules")
    prepare_base(base, train.temperature)
    if train.gradient_checkpointing:
        # Non-reentrant checkpointing propagates grads to LoRA weights even though the
        # frozen embeddings' outputs do not require grad; input grads cover the reentrant path too.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    base.config.use_cache = False
    model = get_peft_model(base, peft_lora_config(train))
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "policy ready", extra={"trainable_params": n_train, "device": str(device), "autocast": str(autocast_dtype)}
    )
    return Policy(
        model=model,
        device=device,
        autocast_dtype=autocast_dtype,
        grad_scaler=torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None,
    )


def load_policy(model_name_or_path: str, train: TrainKwargs, device: DeviceChoice | str = "auto") -> Policy:
    """Load the base model (hub id or directory) and wrap it with the run's LoRA adapter."""
    dev = resolve_device(device)
    base = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=mixed_precision(train, dev) or torch.float32)
    base.to(dev)
    return wrap_policy(base, train, dev)


def collate(
    samples: Sequence[TrainSample], device: torch.device, max_prompt_length: Optional[int] = None, pad_id: int = 0
) -> Batch:
    """Right-pad samples into a Batch; prompts longer than max_prompt_length lose their left part.

    The pad id is never attended to nor scored: right padding sits after every real
    token of a causal model, and completion pads are masked.
    """
    prompts = [list(s.prompt_ids[-max_prompt_length:] if max_prompt_length else s.prompt_ids) for s in samples]
    if any(not p for p in prompts):
        raise ValueError("every sample needs a prompt token: the first completion token is predicted from it")
    lengths = [len(p) + len(s.completion_ids) for p, s in zip(prompts, samples)]
    width = max(lengths)
    t_max = max(len(s.completion_ids) for s in samples)
    b = len(samples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    comp_ids = torch.full((b, t_max), pad_id, dtype=torch.long)
    comp_pos = torch.zeros((b, t_max), dtype=torch.long)
    comp_mask = torch.zeros((b, t_max), dtype=torch.float32)
    sampler = torch.zeros((b, t_max), dtype=torch.float32)
    for i, (prompt, s) in enumerate(zip(prompts, samples)):
        n_p, n_c = len(prompt), len(s.completion_ids)
        input_ids[i, : n_p + n_c] = torch.tensor(prompt + list(s.completion_ids))
        attention[i, : n_p + n_c] = 1
        comp_ids[i, :n_c] = torch.tensor(s.completion_ids)
        comp_pos[i, :n_c] = torch.arange(n_p, n_p + n_c)
        comp_mask[i, :n_c] = 1.0
        sampler[i, :n_c] = torch.tensor(s.sampler_logprobs, dtype=torch.float32)
    return Batch(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        completion_ids=comp_ids.to(device),
        completion_positions=comp_pos.to(device),
        completion_mask=comp_mask.to(device),
        sampler_logps=sampler.to(device),
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32, device=device),
        truncated=torch.tensor([s.truncated for s in samples], dtype=torch.bool, device=device),
    )


def token_logprobs(
    model: PreTrainedModel | PeftModel, batch: Batch, *, autocast_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Per-token logprobs (B, T) of the completion tokens under ``model``; 0 at padding.

    ``model`` must carry the fused LM head (``prepare_base``), which divides the
    logits by the sampling temperature and applies the model's own logit scaling.
    """
    labels = torch.full_like(batch.input_ids, -100)
    labels.scatter_(1, batch.completion_positions, batch.completion_ids)
    labels = labels.masked_fill(batch.attention_mask == 0, -100)
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels, fused_lm_head=True
        )
    # out.log_probs[:, k] scores the token at position k + 1.
    index = (batch.completion_positions - 1).clamp(min=0)
    return torch.gather(out.log_probs.float(), 1, index) * batch.completion_mask


@torch.no_grad()
def reference_logprobs(policy: Policy, batch: Batch) -> torch.Tensor:
    """Logprobs under the base model (adapter disabled): the KL anchor when beta > 0."""
    with policy.model.disable_adapter():
        return token_logprobs(policy.model, batch, autocast_dtype=policy.autocast_dtype)


def policy_logprobs(policy: Policy, batch: Batch) -> torch.Tensor:
    """Logprobs under the current adapter, with gradient."""
    return token_logprobs(policy.model, batch, autocast_dtype=policy.autocast_dtype)
