"""A supervised warm start that turns the random tiny model into a tiny *pretrained* one.

Why: GRPO can only sharpen what a model already does some of the time. A random
model never forwards a PII unit and never writes a sentence of a target answer,
so its rewards barely differ within a group and nothing is learnt (measured on
the embedded default: validation 0.519 -> 0.520 over 17 steps). The warm start
teaches the PAPILLON field format, plausible answers, and a 50/50 habit for the
redaction step: forward the user's query as written (it leaks) or write the
task's PII-free request. Which of the two to prefer is exactly what a privacy-
conscious delegation policy has to learn, and the reward shows it only if the
forward habit really copies the query's names and addresses: most of the steps
go to that (see ``WarmStartSpec.kind_weights``).

The data are fresh synthetic rows from the bundled generator (another seed: of its
1,200 queries, one happens to equal one of the 64 bundled validation queries),
rendered with DSPy's ChatAdapter and the model's chat template exactly as a rollout
renders them.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

# Reasoning lines of the two habits; they differ in their third word, the policy's choice point.
REASONING_FORWARD = "The request can go out as the user wrote it."
REASONING_REDACT = "The request must not reveal anything private about the user."


PAIRS_PER_ROW = 3  # papillon_pairs makes, per data row: redaction step, untrusted answer, response step


@dataclass(frozen=True)
class WarmStartSpec:
    """What determines the warm start (part of the tiny model's cache key)."""

    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 3e-3
    examples: int = 1200
    seed: int = 11  # the generator's seed for the synthetic rows (the bundled files use 7)
    # Batches per kind of pair (redaction, untrusted answer, response). Copying the query is
    # the one skill that takes long to learn (an induction circuit); the answers are templated
    # and learnt within a few hundred steps. Measured: with 1:1:1 the forward habit copied 4-8%
    # of the PII units after 600 steps; with 4:1:1, 67% after 1500.
    kind_weights: tuple[int, int, int] = (4, 1, 1)


@dataclass(frozen=True)
class ChatPair:
    """One supervised example: chat messages and the assistant's reply."""

    messages: list[dict[str, Any]]
    completion: str


def papillon_pairs(rows: Sequence[dict[str, str]], seed: int) -> list[ChatPair]:
    """Per row: the redaction step (either habit, at random), the untrusted model's answer, the response step."""
    from dspy.adapters import ChatAdapter

    from grpo_trainer.dspy.programs.papillon import CRAFT, PAPILLON, RESPOND

    predictors = dict(PAPILLON(untrusted_model=None).named_predictors())
    craft, respond = predictors[CRAFT].signature, predictors[RESPOND].signature
    adapter = ChatAdapter()
    rng = random.Random(seed)
    pairs: list[ChatPair] = []
    for row in rows:
        query, answer = row["user_query"], row["target_response"]
        forward = rng.random() < 0.5
        request = query if forward else row["redacted_request"]
        reasoning = REASONING_FORWARD if forward else REASONING_REDACT
        pairs.append(ChatPair(
            adapter.format(craft, demos=[], inputs={"user_query": query}),
            adapter.format_assistant_message_content(craft, {"reasoning": reasoning, "llm_request": request}).rstrip(),
        ))
        # The untrusted model is called raw: the request as the only user message.
        pairs.append(ChatPair([{"role": "user", "content": request}], answer))
        inputs = {"related_llm_request": request, "related_llm_response": answer, "user_query": query}
        pairs.append(ChatPair(
            adapter.format(respond, demos=[], inputs=inputs),
            adapter.format_assistant_message_content(respond, {"response": answer}).rstrip(),
        ))
    return pairs


def _encode(tokenizer: Any, pair: ChatPair) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS, and where the completion starts."""
    prompt = tokenizer.apply_chat_template(pair.messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(pair.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, len(prompt_ids)


def warm_start(model_dir: Path, spec: WarmStartSpec) -> dict[str, float]:
    """Fine-tune the model in ``model_dir`` in place (all weights) on the PAPILLON pairs; returns loss figures."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_trainer.embedded.bundled.build_pii_delegation import build

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = build(seed=spec.seed, n=spec.examples, with_redacted=True)
    pairs = papillon_pairs(rows, spec.seed)
    # One kind of pair per batch (redaction, untrusted answer, response): similar lengths, little padding.
    kinds = [[_encode(tokenizer, pair) for pair in pairs[k::PAIRS_PER_ROW]] for k in range(PAIRS_PER_ROW)]
    generator = torch.Generator().manual_seed(spec.seed)
    schedule = random.Random(spec.seed).choices(range(PAIRS_PER_ROW), weights=spec.kind_weights, k=spec.steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    warmup = max(1, spec.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * max(0.05, 1 - i / spec.steps)
    )
    pad = tokenizer.pad_token_id
    model.train()
    losses: list[float] = []
    for step in range(spec.steps):
        encoded = kinds[schedule[step]]
        picks = torch.randint(len(encoded), (spec.batch_size,), generator=generator).tolist()
        batch = [encoded[i] for i in picks]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, start) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, start : len(ids)] = torch.tensor(ids[start:])
            attention[row, : len(ids)] = 1
        # The output head only where there are labels: prompts are most of every sequence.
        hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        scored = targets != -100
        logits = model.lm_head(hidden[scored])
        loss = torch.nn.functional.cross_entropy(logits, targets[scored])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0:
            log.info("warm start", extra={"step": step, "loss": round(losses[-1], 4)})
    model.save_pretrained(model_dir, safe_serialization=True)
    tail = losses[-20:]
    figures = {"first_loss": losses[0], "final_loss": sum(tail) / len(tail), "seconds": time.monotonic() - started}
    log.info("warm start done", extra=figures)
    return figures
