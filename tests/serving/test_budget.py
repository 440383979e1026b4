"""`image_token_count`: the tokens per image a serving engine reserves equal what the model sends the LLM."""

import pytest
import torch

from llava_prumerge.errors import UnservableBudgetError
from llava_prumerge.serving.budget import image_token_count

FIXED_SETTINGS = {
    "prumerge budget 8": {"token_reduction": "prumerge", "adaptive": False, "num_visual_tokens": 8},
    "prumerge_plus budget 16": {
        "token_reduction": "prumerge_plus",
        "adaptive": False,
        "num_visual_tokens": 16,
    },
    "prumerge fixed ratio": {"token_reduction": "prumerge", "adaptive": False, "reduction_ratio": 0.1},
    "prumerge_plus fixed ratio": {"token_reduction": "prumerge_plus", "adaptive": False},
    "spatial baseline": {"token_reduction": "spatial", "num_visual_tokens": 20},
    "none": {"token_reduction": "none"},
}


@pytest.mark.parametrize("fields", FIXED_SETTINGS.values(), ids=FIXED_SETTINGS)
def test_the_count_is_what_the_model_sends_for_every_image(tester, images, fields):
    model = tester.get_model(**fields)
    inputs = tester.prepare_inputs(
        images, [f"USER: <image>\nImage {i}? ASSISTANT:" for i in range(len(images))]
    )
    with torch.no_grad():
        counts = model(**inputs).visual_token_counts
    assert counts == [image_token_count(model.config)] * len(images)


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_an_adaptive_count_is_refused_with_the_fixed_budgets_to_use(tester, method):
    with pytest.raises(UnservableBudgetError) as error:
        image_token_count(tester.get_config(token_reduction=method))
    message = str(error.value)
    for text in ("adaptive=True", "64, 128, 192", "--no-adaptive --num-visual-tokens 64", "hf_overrides"):
        assert text in message


NATIVE_RESOLUTION_BUDGETS = {
    "prumerge budget 8": {"token_reduction": "prumerge", "adaptive": False, "num_visual_tokens": 8},
    "prumerge_plus budget 6": {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 6},
    "spatial baseline": {"token_reduction": "spatial", "num_visual_tokens": 10},
}


@pytest.mark.parametrize("fields", NATIVE_RESOLUTION_BUDGETS.values(), ids=NATIVE_RESOLUTION_BUDGETS)
def test_at_native_resolution_a_budget_is_the_count_of_every_image_larger_than_it(fields):
    """Qwen-VL images of different sizes (24, 40 and 64 merged tokens) reach the LLM as the same count."""
    from llava_prumerge.testing.model_tester import make_image
    from llava_prumerge.testing.tiny_qwen import (
        tiny_qwen_image_processor,
        tiny_qwen_inputs,
        tiny_qwen_model,
        tiny_qwen_tokenizer,
    )

    tokenizer = tiny_qwen_tokenizer()
    model = tiny_qwen_model(tokenizer=tokenizer, **fields)
    sizes = [(32, 48), (60, 40), (64, 64)]
    inputs = tiny_qwen_inputs(
        tokenizer, tiny_qwen_image_processor(), ["USER: <image> <image> <image>? ASSISTANT:"],
        [[make_image(index, *size) for index, size in enumerate(sizes)]],
    )  # fmt: skip
    with torch.no_grad():
        counts = model(**inputs).visual_token_counts
    assert counts == [image_token_count(model.config)] * len(sizes)


@pytest.mark.parametrize("fields", [{"token_reduction": "none"}, {"adaptive": False}], ids=["none", "share"])
def test_at_native_resolution_a_count_that_follows_the_image_is_refused(fields):
    from llava_prumerge.testing.tiny_qwen import tiny_qwen_config

    with pytest.raises(UnservableBudgetError, match="follows each image's size"):
        image_token_count(tiny_qwen_config(**fields))
