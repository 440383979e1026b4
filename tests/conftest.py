"""Shared fixtures: a tiny random-weight PruMerge LLaVA, its processor, and images made in code."""

import numpy as np
import pytest
import transformers
from PIL import Image

from llava_prumerge.tiny import tiny_model, tiny_processor, tiny_tokenizer

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def make_image(seed: int, width: int = 56, height: int = 56) -> Image.Image:
    """A random image with a few bright blobs, so that images differ in where attention goes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    for _ in range(1 + seed % 4):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        pixels[y : y + 8, x : x + 8] = rng.integers(150, 255, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def processor(tokenizer):
    return tiny_processor(tokenizer)


@pytest.fixture(scope="session")
def model(tokenizer):
    return tiny_model(tokenizer=tokenizer)


@pytest.fixture(scope="session")
def images():
    return [make_image(seed) for seed in range(4)]
