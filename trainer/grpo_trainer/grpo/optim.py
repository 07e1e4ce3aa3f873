"""AdamW over the adapter's weights and the learning-rate schedule, from TrainKwargs."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from grpo_trainer.contract.hparams import TrainKwargs


def build_optimizer(params: list[torch.nn.Parameter], train: TrainKwargs) -> torch.optim.AdamW:
    """AdamW with the run's hyperparameters; only trainable (LoRA) parameters belong in ``params``."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: is the LoRA adapter attached?")
    return torch.optim.AdamW(
        trainable,
        lr=train.learning_rate,
        betas=(train.adam_beta1, train.adam_beta2),
        eps=train.adam_epsilon,
        weight_decay=train.weight_decay,
    )


def warmup_steps(train: TrainKwargs) -> int:
    """warmup_steps wins; otherwise warmup_ratio of max_steps, rounded up (as transformers' TrainingArguments)."""
    if train.warmup_steps > 0:
        return train.warmup_steps
    return math.ceil(train.warmup_ratio * train.max_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainKwargs) -> LRScheduler:
    """The transformers schedule named by lr_scheduler_type over a horizon of max_steps optimizer steps."""
    return get_scheduler(
        train.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(train),
        num_training_steps=train.max_steps,
    )
