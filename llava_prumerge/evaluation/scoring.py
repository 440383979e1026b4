"""Scoring Shapes-VQA answers: normalization, exact match, accuracy overall and per question type."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .shapes_vqa import QUESTION_TYPES, Question

NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}
_WORD = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """The first word of a generated answer, lowercased, punctuation dropped, number words as digits:
    " Red.</s>" -> "red", "Two shapes" -> "2", "" -> ""."""
    match = _WORD.search(text.lower())
    word = match.group(0) if match else ""
    return NUMBER_WORDS.get(word, word)


@dataclass
class Scores:
    """Exact-match accuracy of normalized answers, overall and per question type."""

    correct: int = 0
    total: int = 0
    per_type: dict[str, tuple[int, int]] = field(default_factory=dict)  # type -> (correct, total)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def type_accuracy(self, question_type: str) -> float:
        correct, total = self.per_type.get(question_type, (0, 0))
        return correct / total if total else float("nan")

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_type": {
                kind: {"accuracy": self.type_accuracy(kind), "correct": c, "total": t}
                for kind, (c, t) in self.per_type.items()
            },
        }


def score_answers(questions: Sequence[Question], predictions: Sequence[str]) -> Scores:
    """Compare generated answers (raw text) with the questions' answers."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    scores = Scores(per_type={kind: (0, 0) for kind in QUESTION_TYPES})
    for question, prediction in zip(questions, predictions, strict=True):
        right = normalize_answer(prediction) == question.answer
        correct, total = scores.per_type[question.question_type]
        scores.per_type[question.question_type] = (correct + right, total + 1)
        scores.correct += right
        scores.total += 1
    scores.per_type = {kind: counts for kind, counts in scores.per_type.items() if counts[1]}
    return scores
