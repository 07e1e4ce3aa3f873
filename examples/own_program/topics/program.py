"""The program: one predictor, ``text -> topic``."""

from __future__ import annotations

import dspy


class TopicSignature(dspy.Signature):
    """Name the topic of the text in one lower-case word: sport, food, music or travel."""

    text: str = dspy.InputField()
    topic: str = dspy.OutputField()


class Topic(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict(TopicSignature)

    def forward(self, text: str) -> dspy.Prediction:
        return self.classify(text=text)
