"""Fixtures shared by every test: the tiny LLaVA PruMerge model tester, its tokenizer, processor,
model and images (all built in code; nothing is downloaded). Helpers live in
`llava_prumerge.testing`, not here."""

import pytest

from llava_prumerge.testing.model_tester import LlavaPruMergeModelTester, VideoLlavaPruMergeModelTester


@pytest.fixture(scope="session")
def tester():
    return LlavaPruMergeModelTester()


@pytest.fixture(scope="session")
def tokenizer(tester):
    return tester.tokenizer


@pytest.fixture(scope="session")
def processor(tester):
    return tester.processor


@pytest.fixture(scope="session")
def model(tester):
    return tester.get_model()


@pytest.fixture(scope="session")
def images(tester):
    return tester.images(4)


@pytest.fixture(scope="session")
def video_tester():
    return VideoLlavaPruMergeModelTester()
