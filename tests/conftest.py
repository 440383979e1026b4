"""Fixtures shared by every test: the tiny LLaVA PruMerge model tester, its tokenizer, processor,
model and images (all built in code; nothing is downloaded). Helpers live in
`llava_prumerge.testing`, not here."""

import os

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


@pytest.fixture(scope="session")
def vllm():
    """The vllm module. Tests that use it are skipped where vLLM is not installed (the tf4 and tf5 runs),
    except with PRUMERGE_TEST_VLLM=1, which scripts/test.sh sets for its vLLM run: there a missing or
    broken vLLM fails them instead of skipping them."""
    if os.environ.get("PRUMERGE_TEST_VLLM") == "1":
        import vllm

        return vllm
    return pytest.importorskip(
        "vllm", reason="needs vLLM: scripts/test.sh runs these in its vLLM environment (PRUMERGE_TEST_VLLM=1)"
    )
