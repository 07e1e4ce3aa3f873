"""The metric: exact match of the topic, with partial credit a small model can climb.

Exact match alone is 0 for every sample of an untrained tiny model, so GRPO would
see no reward differences; shared character bigrams give a continuous signal.
"""

from __future__ import annotations

from typing import Any


def _bigrams(text: str) -> set[str]:
    text = " ".join(str(text or "").lower().split())
    return {text[i : i + 2] for i in range(len(text) - 1)}


def topic_match(example: Any, pred: Any, trace: Any = None) -> float:
    gold, guess = str(example.topic).strip().lower(), str(getattr(pred, "topic", "") or "").strip().lower()
    if guess == gold:
        return 1.0
    a, b = _bigrams(gold), _bigrams(guess)
    return 0.5 * (2 * len(a & b) / (len(a) + len(b))) if a and b else 0.0
