"""`llava-prumerge eval --task shapes-vqa`: accuracy against visual tokens, for every method and budget.

Every configuration answers the same questions: the first `limit` questions of a Shapes-VQA split
rendered at the model's input size, each alone with its image, through the model's chat template
(`USER: <image>\\n{question} ASSISTANT:`), greedy, at most `max_new_tokens` new tokens. Per
configuration: exact-match accuracy of the normalized first word, overall and per question type, the
mean visual tokens per image the language model saw, and the prefill time per question (one forward
of the whole prompt: vision tower, reducer, projector and the language model's prefill, batched).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import ReductionSettingsError, UsageError
from ..modeling.reduction_settings import ReductionSettings
from .scoring import Scores, score_answers
from .shapes_vqa import Question, make_example

DEFAULT_TEST_IMAGES = 300  # images per split that eval draws its questions from (about 3.7 each)
BUDGETED = ("prumerge", "prumerge_plus", "spatial", "sequential")  # methods a fixed budget applies to
ADAPTIVE = ("prumerge", "prumerge_plus")  # methods with an adaptive (IQR) count


@dataclass(frozen=True)
class Configuration:
    """One row of the evaluation: a method, adaptive or at a fixed budget."""

    method: str
    budget: int | None  # None: adaptive (PruMerge, PruMerge+) or every token ("none")
    settings: ReductionSettings

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method}@{self.budget}"


@dataclass
class Result:
    configuration: Configuration
    scores: Scores
    mean_visual_tokens: float
    prefill_ms_per_question: float
    predictions: list[str] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        return {
            "label": self.configuration.label,
            "method": self.configuration.method,
            "budget": self.configuration.budget,
            "mean_visual_tokens": self.mean_visual_tokens,
            "prefill_ms_per_question": self.prefill_ms_per_question,
            **self.scores.to_dict(),
        }


def configurations(base: ReductionSettings, methods: list[str], budgets: list[int]) -> list[Configuration]:
    """`none`; PruMerge and PruMerge+ adaptive and at each budget; the baselines at each budget."""
    rows = []
    for method in methods:
        if method == "none":
            rows.append(Configuration("none", None, base.replace(token_reduction="none")))
            continue
        if method in ADAPTIVE:
            rows.append(Configuration(method, None, base.replace(token_reduction=method, adaptive=True)))
        if method in BUDGETED:
            for budget in budgets:
                settings = base.replace(token_reduction=method, adaptive=False, num_visual_tokens=budget)
                rows.append(Configuration(method, budget, settings))
    return rows


@torch.inference_mode()
def check_configurations(model, rows: list[Configuration]) -> None:
    """Refuse a budget above the model's patches per image (the reducer would keep them all, the row
    mislabeled), then run each configuration's reducer once on a blank image, so that settings the reducer
    refuses stop the run before the first question rather than after the configurations before it."""
    largest = model.model.image_placeholder_count()
    if too_large := sorted({row.budget for row in rows if row.budget is not None and row.budget > largest}):
        raise UsageError(
            f"--budgets {','.join(map(str, too_large))}: this model has {largest} patches per image; "
            f"use budgets of at most {largest}"
        )
    size = model.config.vision_config.image_size
    blank = torch.zeros(1, 3, size, size, dtype=model.dtype, device=model.device)
    for row in rows:
        try:
            encoded = model.model.encode_patches(blank, reduction=row.settings)
            model.model.reduce_patches(encoded, reduction=row.settings)
        except ReductionSettingsError as error:
            option = f"--budgets {row.budget}" if row.budget is not None else f"--methods {row.method}"
            raise UsageError(f"{option} ({row.label}): {error}") from error


def shapes_vqa_questions(split: str, image_size: int, limit: int | None, num_images: int):
    """The first `limit` questions (all when None) of the first `num_images` images of `split`, with
    their images."""
    pairs = []
    for index in range(num_images):
        if limit is not None and len(pairs) >= limit:
            break
        example = make_example(split, index, image_size)
        pairs += [(question, example.image) for question in example.questions]
    return pairs[:limit] if limit is not None else pairs


def prompt_of(processor, question: Question) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.inference_mode()
def evaluate_configuration(
    model, processor, pairs, configuration: Configuration, batch_size: int, max_new_tokens: int
) -> Result:
    predictions, tokens, prefill_seconds = [], [], 0.0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        inputs = processor(
            images=[image for _, image in batch],
            text=[prompt_of(processor, question) for question, _ in batch],
            return_tensors="pt",
            padding=True,
        ).to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        began = time.perf_counter()
        output = model(**inputs, reduction=configuration.settings, logits_to_keep=1)
        prefill_seconds += time.perf_counter() - began
        tokens += [int(count) for count in output.visual_token_counts]
        generated = model.generate(
            **inputs,
            reduction=configuration.settings,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        predictions += processor.batch_decode(new_tokens, skip_special_tokens=True)
    questions = [question for question, _ in pairs]
    return Result(
        configuration,
        score_answers(questions, predictions),
        sum(tokens) / len(tokens),
        1000 * prefill_seconds / len(pairs),
        predictions,
    )


def evaluate_shapes_vqa(
    model,
    processor,
    methods: list[str],
    budgets: list[int],
    split: str = "test",
    limit: int | None = None,
    num_images: int = DEFAULT_TEST_IMAGES,
    batch_size: int = 32,
    max_new_tokens: int = 3,
    log=None,
) -> tuple[list[Result], list]:
    """Every configuration on the same questions; returns the results and the (question, image) pairs."""
    rows = configurations(model.config.reduction_settings, methods, budgets)
    if not rows:
        raise UsageError(f"no configuration to evaluate for --methods {','.join(methods)}")
    check_configurations(model, rows)
    pairs = shapes_vqa_questions(split, model.config.vision_config.image_size, limit, num_images)
    if not pairs:
        raise UsageError("no questions to evaluate; raise --limit")
    results = []
    for number, configuration in enumerate(rows, 1):
        began = time.perf_counter()
        result = evaluate_configuration(model, processor, pairs, configuration, batch_size, max_new_tokens)
        results.append(result)
        if log is not None:
            log(
                f"[{number}/{len(rows)}] {configuration.label}: accuracy {result.scores.accuracy:.3f}, "
                f"{result.mean_visual_tokens:.1f} visual tokens ({time.perf_counter() - began:.0f} s)"
            )
    return results, pairs
