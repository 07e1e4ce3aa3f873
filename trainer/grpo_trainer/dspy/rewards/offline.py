"""``papillon_offline``: PAPILLON's score shape with no judge calls, deterministic.

score = (quality + (1 - leakage)) / 2, with a trace ``score >= 1.0`` (as
``compute_overall_score``).

leakage: the fraction of the example's PII units (``pii_str`` split on ``||``,
de-duplicated) that appear verbatim, case-insensitively, in the outgoing
``llm_request`` -- exact matching where the tutorial asks a judge.

quality: character-trigram F1 between the response and the gold
``target_response`` (lower-cased, whitespace collapsed, counts clipped as in
chrF). Why this proxy: GRPO learns only from reward differences *within* a group
of samples, so the reward must vary between the samples of an untrained model.
Word-overlap F1 is almost always 0 for a random tiny model (no signal), while
trigram overlap is continuous and non-zero for any text, and rises as the model
shifts probability toward tokens that make up common English (" th", "the",
"ing", "you") and toward a length near the target's -- changes a small policy can
make in tens of steps. It also rewards a real model for answering the question
rather than echoing its redacted request.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Union

from grpo_trainer.dspy.rewards.papillon import overall_score, pii_units

_SPACE = re.compile(r"\s+")


def _normalise(text: Any) -> str:
    return _SPACE.sub(" ", str(text or "")).strip().lower()


def _trigrams(text: str) -> Counter[str]:
    return Counter(text[i : i + 3] for i in range(len(text) - 2))


def trigram_f1(candidate: Any, reference: Any) -> float:
    """Clipped character-trigram F1 of two texts, in [0, 1] (0 when either has no trigram)."""
    cand, ref = _trigrams(_normalise(candidate)), _trigrams(_normalise(reference))
    if not cand or not ref:
        return 0.0
    overlap = sum((cand & ref).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(cand.values())
    recall = overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def leakage(pii_str: Any, request: Any) -> float:
    """Fraction of PII units found verbatim (case-insensitive) in ``request``; 0 with no units."""
    units = pii_units(str(pii_str) if pii_str is not None else "")
    if not units:
        return 0.0
    haystack = str(request or "").lower()
    return sum(1 for u in units if u.lower() in haystack) / len(units)


def papillon_offline(example: Any, pred: Any, trace: Any = None) -> Union[float, bool]:
    quality = trigram_f1(getattr(pred, "response", ""), example.get("target_response", ""))
    leaked = leakage(example.get("pii_str", ""), getattr(pred, "llm_request", ""))
    return overall_score(quality, leaked, trace)
