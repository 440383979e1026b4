"""vLLM serving PruMerge Hub folders (run in the vLLM environment scripts/test.sh builds; skipped elsewhere).

In-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0) for `LLM.generate`: prompt lengths, greedy tokens
and log-probabilities against the transformers model on the same folder, batches of one- and two-image
prompts. The OpenAI server runs as `llava-prumerge serve` in vLLM's multi-process mode with tensor
parallelism over two CPU worker processes (server, engine core and two workers, each loading the plugin;
vLLM splits the vision tower's heads across the ranks and the reducer gathers the q/k it needs), and is
checked against the transformers model the same way. It runs in its own process because vLLM reads its
environment once per process: after an in-process engine, a second engine's thread binding is fixed.
What is compared, and why log-probabilities: `testing.served`.
"""

import os
from pathlib import Path

import pytest
from transformers import AutoProcessor

from llava_prumerge import LlavaPruMergeForConditionalGeneration
from llava_prumerge.errors import UnservableBudgetError
from llava_prumerge.hub_upload.export import save_hub_folder
from llava_prumerge.testing.model_tester import make_image
from llava_prumerge.testing.served import (
    ENGINE,
    assert_chat_reply_as_transformers,
    assert_served_as_transformers,
    chat_on_two_ranks,
    greedy,
)
from llava_prumerge.testing.tiny import tiny_model, tiny_processor, tiny_tokenizer

NEW_TOKENS = 6
FOLDERS = {  # name -> reducer fields of a tiny vLLM-shaped export
    "prumerge budget 8": {"token_reduction": "prumerge", "adaptive": False, "num_visual_tokens": 8},
    "prumerge_plus budget 24": {
        "token_reduction": "prumerge_plus",
        "adaptive": False,
        "num_visual_tokens": 24,
    },
}
PROMPTS = [  # (text, number of images): batched together in one generate call
    ("USER: <image>\nWhat is shown? ASSISTANT:", 1),
    ("USER: <image>\nCompare it with <image>. ASSISTANT:", 2),
    ("USER: <image>\nDescribe the picture in detail. ASSISTANT:", 1),
]


def export_tiny(folder: Path, **fields) -> Path:
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer, **fields)
    return save_hub_folder(
        model, tiny_processor(tokenizer), folder, model_card_extra={"license": "apache-2.0"}
    )


@pytest.fixture(scope="module", autouse=True)
def in_process_engines():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    yield
    del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]


@pytest.fixture(scope="module", params=FOLDERS.values(), ids=FOLDERS)
def served(vllm, request, tmp_path_factory):
    """(folder, budget, in-process vLLM engine) for one fixed-budget export."""
    folder = export_tiny(tmp_path_factory.mktemp("vllm") / "tiny", **request.param)
    llm = vllm.LLM(model=str(folder), limit_mm_per_prompt={"image": 2}, **ENGINE)
    yield folder, request.param["num_visual_tokens"], llm
    del llm


def image_inputs(prompt_index: int, count: int) -> list:
    return [make_image(10 * prompt_index + i, width=60 + 8 * i, height=44) for i in range(count)]


def image_requests() -> list[dict]:
    return [
        {"prompt": text, "multi_modal_data": {"image": image_inputs(i, count)}}
        for i, (text, count) in enumerate(PROMPTS)
    ]


def assert_matches_the_transformers_model(folder: Path, budget: int, outputs: list) -> None:
    """vLLM's outputs for image_requests() have the prompts of the folder's processor (text + budget per
    image), the transformers model's greedy tokens and its log-probabilities."""
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaPruMergeForConditionalGeneration.from_pretrained(folder).eval()
    for i, ((text, count), output) in enumerate(zip(PROMPTS, outputs, strict=True)):
        inputs = processor(images=image_inputs(i, count), text=text, return_tensors="pt")
        text_tokens = len(processor.tokenizer(text.replace("<image>", "")).input_ids)
        prompt = output.prompt_token_ids
        assert len(prompt) == text_tokens + budget * count
        assert prompt == inputs["input_ids"][0].tolist(), "the folder's processor and vLLM disagree"
        assert_served_as_transformers(output, model, inputs, NEW_TOKENS)


def test_generate_matches_the_transformers_model_on_the_same_folder(vllm, served):
    folder, budget, llm = served
    outputs = llm.generate(image_requests(), greedy(vllm, NEW_TOKENS), use_tqdm=False)
    assert_matches_the_transformers_model(folder, budget, outputs)


def test_an_adaptive_folder_is_refused_at_load(vllm, tmp_path):
    folder = export_tiny(tmp_path / "adaptive", token_reduction="prumerge_plus")
    with pytest.raises(UnservableBudgetError, match=r"adaptive=True .* 64, 128, 192"):
        vllm.LLM(model=str(folder), **ENGINE)


def test_the_openai_server_on_two_tensor_parallel_ranks_answers_an_image_chat_as_transformers_does(
    vllm, tmp_path
):
    budget = 24
    folder = export_tiny(
        tmp_path / "tiny", token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=budget
    )
    image = make_image(3, width=70, height=40)
    reply = chat_on_two_ranks(folder, tmp_path / "server.log", image, "What is shown?", NEW_TOKENS)
    processor = AutoProcessor.from_pretrained(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = processor(images=[image], text=text, add_special_tokens=False, return_tensors="pt")
    assert reply.prompt_token_ids == inputs["input_ids"][0].tolist(), (
        "the folder's processor and vLLM disagree"
    )
    model = LlavaPruMergeForConditionalGeneration.from_pretrained(folder).eval()
    assert_chat_reply_as_transformers(reply, processor, model, image, "What is shown?", "<image>", budget)
