"""Each architecture against an independent reference of what its language model receives.

The references (`llava_prumerge.testing.references`) use the stock twin's parts, the loop oracle and the
documented layouts only, so these tests catch a wrong encoder, reducer, layout or compaction alike: the
embeddings the language model receives must be the reference's, and the log-probabilities those of the
stock language model reading the reference's prompt. Each prompt is checked alone and in a padded batch.
"""

import os

import pytest

from llava_prumerge.testing.model_tester import LONG_PROMPT, PROMPT, make_image, stock_twin
from llava_prumerge.testing.references import (
    assert_matches_reference,
    llava_image_tokens,
    llava_next_image_tokens,
    video_llava_video_items,
)
from llava_prumerge.testing.subprocesses import run_offline
from llava_prumerge.testing.tiny_next import tiny_next_model, tiny_next_processor

VISION_PYTHONS = [
    python for python in os.environ.get("PRUMERGE_TEST_VISION_PYTHONS", "").split(":") if python
]
METHODS = ["prumerge", "prumerge_plus"]
SEED = 3
ROWS = {"first": [0], "second": [1], "batched": [0, 1]}
VIDEO_PROMPT = "USER: <video>\nWhat happens in the video? ASSISTANT:"
MIXED_PROMPT = "USER: <image>\nThis picture, then <video>\nwhich came first? ASSISTANT:"


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
    items = video_llava_video_items(stock, inputs, method)
    assert_matches_reference(models[method], stock, inputs, items)


VIDEO_PROCESSOR_SCRIPT = r"""
import numpy as np
import transformers

from llava_prumerge.testing.model_tester import VideoLlavaPruMergeModelTester
from llava_prumerge.testing.references import assert_matches_reference, video_llava_video_items
from llava_prumerge.testing.tiny_video import tiny_video_processor

tester = VideoLlavaPruMergeModelTester()
processor = tiny_video_processor(tester.tokenizer)
clip, image = np.stack(tester.clips(1)[0]), tester.images(1)[0]
inputs = processor(
    text="USER: <image>\nThis picture, then <video>\nwhich came first? ASSISTANT:", images=image, videos=clip,
    return_tensors="pt",
)
stock = tester.get_stock_model(3)
for method in ("prumerge", "prumerge_plus"):
    assert_matches_reference(tester.get_model(3, token_reduction=method), stock, inputs, video_llava_video_items(stock, inputs, method))
print("reference OK under transformers", transformers.__version__)
"""


@pytest.mark.skipif(
    not VISION_PYTHONS, reason="needs the torchvision overlays (PRUMERGE_TEST_VISION_PYTHONS)"
)
def test_video_llava_with_its_stock_processor_feeds_the_reference_tokens(tmp_path, monkeypatch):
    """The inputs of stock `VideoLlavaProcessor` (its video processor needs torchvision: the test overlays)."""
    monkeypatch.setattr("llava_prumerge.testing.subprocesses.TEST_PYTHONS", VISION_PYTHONS)
    for output in run_offline(VIDEO_PROCESSOR_SCRIPT, [], tmp_path).values():
        assert "reference OK" in output
