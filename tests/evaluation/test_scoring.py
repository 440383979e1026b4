"""Eval scoring: known predictions give known scores."""

import math

import pytest

from llava_prumerge.evaluation.scoring import normalize_answer, score_answers
from llava_prumerge.evaluation.shapes_vqa import Question


def q(kind: str, answer: str, index: int = 0) -> Question:
    return Question("test", index, kind, f"a {kind} question?", answer)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" red", "red"),
        ("Red.", "red"),
        (" Yes, there is.", "yes"),
        ("two", "2"),
        ("3 shapes", "3"),
        ("", ""),
        ("  ...", ""),
        ("LEFT</s>", "left"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_known_predictions_give_known_scores():
    questions = [
        q("color", "red"),
        q("color", "blue"),
        q("count", "3"),
        q("count", "1"),
        q("exists", "yes"),
        q("exists", "no"),
        q("exists", "no"),
        q("position", "left"),
    ]
    predictions = [" red", " green", " three", "1", "Yes", "yes", " no", " right"]
    scores = score_answers(questions, predictions)
    assert (scores.correct, scores.total) == (5, 8)
    assert scores.accuracy == 5 / 8
    assert scores.per_type == {"color": (1, 2), "count": (2, 2), "exists": (2, 3), "position": (0, 1)}
    assert scores.type_accuracy("exists") == 2 / 3
    as_dict = scores.to_dict()
    assert as_dict["accuracy"] == 0.625 and as_dict["per_type"]["count"]["accuracy"] == 1.0


def test_absent_question_types_are_left_out():
    scores = score_answers([q("count", "2")], ["2"])
    assert scores.per_type == {"count": (1, 1)} and math.isnan(scores.type_accuracy("color"))


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 questions but 1 predictions"):
        score_answers([q("count", "2"), q("count", "1")], ["2"])
