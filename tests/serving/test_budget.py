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
