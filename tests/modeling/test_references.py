"""Each architecture against an independent reference of what its language model receives.

The references (`llava_prumerge.testing.references`) use the stock twin's parts, the loop oracle and the
documented layouts only, so these tests catch a wrong encoder, reducer, layout or compaction alike: the
embeddings the language model receives must be the reference's, and the log-probabilities those of the
stock language model reading the reference's prompt. Each prompt is checked alone and in a padded batch.
"""

import pytest
import torch

from llava_prumerge.modeling.runtime_compat import VIDEO_LLAVA_IMAGES_ARGUMENT
from llava_prumerge.testing.model_tester import LONG_PROMPT, PROMPT, make_image, stock_twin
from llava_prumerge.testing.references import (
    language_model_logits,
    llava_image_tokens,
    llava_next_image_tokens,
    spliced_embeddings,
    video_llava_video_tokens,
)
from llava_prumerge.testing.tiny_next import tiny_next_model, tiny_next_processor

METHODS = ["prumerge", "prumerge_plus"]
SEED = 3
ROWS = {"first": [0], "second": [1], "batched": [0, 1]}
VIDEO_PROMPT = "USER: <video>\nWhat happens in the video? ASSISTANT:"
MIXED_PROMPT = "USER: <image>\nThis picture, then <video>\nwhich came first? ASSISTANT:"


def received_by_language_model(model, inputs):
    """The model's output and the embeddings its language model received [B, L', hidden]."""
    received = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        hook.remove()
    return out, received[0]


def assert_matches_reference(model, stock, inputs, items: dict):
    """Per prompt, the embeddings received and the log-probabilities (padding aside) match the reference."""
    out, received = received_by_language_model(model, inputs)
    with torch.no_grad():
        expected = spliced_embeddings(stock, inputs["input_ids"], inputs["attention_mask"], items)
        for row, embeddings in enumerate(expected):
            kept = out.attention_mask[row].bool()
            torch.testing.assert_close(received[row][kept], embeddings, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                out.logits[row][kept].log_softmax(-1),
                language_model_logits(stock, embeddings).log_softmax(-1),
                rtol=0,
                atol=1e-4,
            )


@pytest.fixture(scope="module")
def llava(tester):
    stock = tester.get_stock_model(SEED)
    return stock, {method: tester.get_model(SEED, token_reduction=method) for method in METHODS}


@pytest.fixture(scope="module")
def llava_next(tokenizer):
    models = {method: tiny_next_model(SEED, tokenizer, token_reduction=method) for method in METHODS}
    return stock_twin(models["prumerge"].config, SEED), models, tiny_next_processor(tokenizer)


@pytest.fixture(scope="module")
def video_llava(video_tester):
    stock = video_tester.get_stock_model(SEED)
    return stock, {method: video_tester.get_model(SEED, token_reduction=method) for method in METHODS}


@pytest.mark.parametrize("rows", ROWS.values(), ids=ROWS.keys())
@pytest.mark.parametrize("method", METHODS)
def test_llava_feeds_the_reference_tokens(tester, llava, method, rows):
    """Each image's reduced tokens in reducer order (summary token last) replace its placeholder run."""
    stock, models = llava
    images, texts = tester.images(2), [PROMPT, LONG_PROMPT]
    inputs = tester.prepare_inputs([images[row] for row in rows], [texts[row] for row in rows])
    items = {stock.config.image_token_id: llava_image_tokens(stock, inputs["pixel_values"], method)}
    assert_matches_reference(models[method], stock, inputs, items)


@pytest.mark.parametrize("rows", ROWS.values(), ids=ROWS.keys())
@pytest.mark.parametrize("method", METHODS)
def test_llava_next_feeds_the_reference_tokens(llava_next, method, rows):
    """A wide picture (1x2 crops) and a large one (2x2 crops), both padded above and below: the base view,
    then per row of crops its kept tokens in raster order, its summary tokens and a newline."""
    stock, models, processor = llava_next
    pictures = [make_image(1, width=90, height=40), make_image(2, width=120, height=112)]
    texts = [PROMPT, LONG_PROMPT]
    inputs = processor(
        images=[pictures[row] for row in rows],
        text=[texts[row] for row in rows],
        return_tensors="pt",
        padding=True,
    )
    items = {
        stock.config.image_token_id: llava_next_image_tokens(
            stock, inputs["pixel_values"], inputs["image_sizes"], method
        )
    }
    assert_matches_reference(models[method], stock, inputs, items)


@pytest.mark.parametrize("rows", ROWS.values(), ids=ROWS.keys())
@pytest.mark.parametrize("method", METHODS)
def test_video_llava_feeds_the_reference_tokens(video_tester, video_llava, method, rows):
    """An 8-frame clip alone, and an image with a clip in one prompt: per frame its [CLS] token first, then
    its reduced tokens; images as LLaVA-1.5."""
    stock, models = video_llava
    clips, texts = video_tester.clips(2), [VIDEO_PROMPT, MIXED_PROMPT]
    images = video_tester.images(1) if 1 in rows else None  # the second prompt's image
    inputs = video_tester.prepare_inputs(
        [texts[row] for row in rows], images=images, videos=[clips[row] for row in rows]
    )
    items = {
        stock.config.video_token_id: video_llava_video_tokens(stock, inputs["pixel_values_videos"], method)
    }
    if images:
        pixels = inputs[VIDEO_LLAVA_IMAGES_ARGUMENT]
        items[stock.config.image_token_id] = llava_image_tokens(
            stock, pixels, method, stock.model.image_tower
        )
    assert_matches_reference(models[method], stock, inputs, items)
