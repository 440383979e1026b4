"""vLLM serving PruMerge Hub folders (run in the vLLM environment scripts/test.sh builds; skipped elsewhere).

In-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0) for `LLM.generate`: prompt lengths, greedy tokens
against the transformers model on the same folder, batches of one- and two-image prompts. The OpenAI
server runs as `llava-prumerge serve`, in vLLM's default multi-process mode (server and engine core in
separate processes).
"""

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

from transformers import AutoProcessor  # noqa: E402

from llava_prumerge import LlavaPruMergeForConditionalGeneration  # noqa: E402
from llava_prumerge.errors import UnservableBudgetError  # noqa: E402
from llava_prumerge.hub_upload.export import save_hub_folder  # noqa: E402
from llava_prumerge.testing.model_tester import make_image  # noqa: E402
from llava_prumerge.testing.tiny import VLLM_TINY_TEXT_HEADS, tiny_model, tiny_processor, tiny_tokenizer  # noqa: E402

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
ENGINE = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True, "kv_cache_memory_bytes": 2**26}


def export_tiny(folder: Path, **fields) -> Path:
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer, text_heads=VLLM_TINY_TEXT_HEADS, **fields)
    return save_hub_folder(
        model, tiny_processor(tokenizer), folder, model_card_extra={"license": "apache-2.0"}
    )


@pytest.fixture(scope="module", autouse=True)
def in_process_engines():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    yield
    del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]


@pytest.fixture(scope="module", params=FOLDERS.values(), ids=FOLDERS)
def served(request, tmp_path_factory):
    """(folder, budget, in-process vLLM engine) for one fixed-budget export."""
    folder = export_tiny(tmp_path_factory.mktemp("vllm") / "tiny", **request.param)
    llm = vllm.LLM(model=str(folder), limit_mm_per_prompt={"image": 2}, **ENGINE)
    yield folder, request.param["num_visual_tokens"], llm
    del llm


def image_inputs(prompt_index: int, count: int) -> list:
    return [make_image(10 * prompt_index + i, width=60 + 8 * i, height=44) for i in range(count)]


def test_generate_matches_the_transformers_model_on_the_same_folder(served):
    folder, budget, llm = served
    requests = [
        {"prompt": text, "multi_modal_data": {"image": image_inputs(i, count)}}
        for i, (text, count) in enumerate(PROMPTS)
    ]
    outputs = llm.generate(
        requests, vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0), use_tqdm=False
    )
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaPruMergeForConditionalGeneration.from_pretrained(folder).eval()
    for i, ((text, count), output) in enumerate(zip(PROMPTS, outputs, strict=True)):
        inputs = processor(images=image_inputs(i, count), text=text, return_tensors="pt")
        text_tokens = len(processor.tokenizer(text.replace("<image>", "")).input_ids)
        assert len(output.prompt_token_ids) == text_tokens + budget * count
        assert output.prompt_token_ids == inputs["input_ids"][0].tolist(), (
            "the folder's processor and vLLM disagree"
        )
        with torch.no_grad():
            expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, -NEW_TOKENS:]
        assert list(output.outputs[0].token_ids) == expected.tolist(), f"prompt {i}"


def test_an_adaptive_folder_is_refused_at_load(tmp_path):
    folder = export_tiny(tmp_path / "adaptive", token_reduction="prumerge_plus")
    with pytest.raises(UnservableBudgetError, match=r"adaptive=True .* 64, 128, 192"):
        vllm.LLM(model=str(folder), **ENGINE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_openai_server_answers_an_image_chat_with_the_reduced_prompt(tmp_path):
    import openai

    budget = 24
    folder = export_tiny(
        tmp_path / "tiny", token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=budget
    )
    port = free_port()
    script = Path(sys.executable).parent / "llava-prumerge"
    command = [str(script), "serve", str(folder), "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
               "--enforce-eager", "--kv-cache-memory-bytes", str(2**26)]  # fmt: skip
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        wait_until_up(client, server, tmp_path / "server.log")
        image = make_image(3, width=70, height=40)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                                 {"type": "text", "text": "What is shown?"}]}]  # fmt: skip
        reply = client.chat.completions.create(
            model=str(folder), messages=messages, max_tokens=NEW_TOKENS, temperature=0
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    processor = AutoProcessor.from_pretrained(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    text_tokens = len(processor.tokenizer(prompt.replace("<image>", ""), add_special_tokens=False).input_ids)
    assert reply.usage.prompt_tokens == text_tokens + budget
    assert reply.usage.completion_tokens == NEW_TOKENS and reply.choices[0].message.content


def wait_until_up(client, server: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            client.models.list()
            return
        except openai_connection_errors():
            time.sleep(1)
    raise AssertionError(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def openai_connection_errors():
    import openai

    return (openai.APIConnectionError, openai.APITimeoutError)
