"""What the vLLM tests compare: a served request against the transformers model on the same folder.

vLLM's prompts hold each item's budget of placeholders; the transformers model compacts a stock prompt to
the same layout, so its logits line up with vLLM's prompt token for token. Log-probabilities are
compared, not only greedy tokens: on tiny random-weight models, serving the reduced tokens in another
order left all greedy tokens unchanged but moved the log-probabilities by 3e-3 to 0.17, while float32
vLLM and transformers on one CPU agree to 5e-7.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ENGINE = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True, "kv_cache_memory_bytes": 2**26}
LOGPROB_TOLERANCE = 1e-4


def greedy(vllm, new_tokens: int, min_tokens: int = 0):
    """Greedy sampling with the log-probability of every prompt token and of every generated token
    (`min_tokens`: no end of sequence before, as `generate`'s `min_new_tokens`)."""
    return vllm.SamplingParams(
        max_tokens=new_tokens, min_tokens=min_tokens, temperature=0, logprobs=0, prompt_logprobs=0
    )


def transformers_reference(model, inputs: dict, prompt: list[int], new_tokens: int, min_new_tokens: int = 0):
    """The transformers model's greedy tokens, the log-probability of each token of `prompt` (the compacted
    prompt, as vLLM's) after the first, and of each greedy token."""
    with torch.no_grad():
        generated = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
        logits = model(**inputs).logits[0]  # [compacted length, vocab]
    assert logits.shape[0] == len(prompt), (
        f"the transformers model compacted the prompt to {logits.shape[0]} tokens, vLLM's has {len(prompt)}"
    )
    tokens = generated.sequences[0, -new_tokens:]
    prompt_logprobs = logits[:-1].log_softmax(-1)[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    token_logprobs = torch.stack([step[0].log_softmax(-1) for step in generated.logits])  # [new, vocab]
    return tokens.tolist(), prompt_logprobs, token_logprobs[torch.arange(new_tokens), tokens]


def assert_served_as_transformers(
    output, model, inputs: dict, new_tokens: int, min_new_tokens: int = 0
) -> None:
    """One vLLM request output: the transformers model's greedy tokens and log-probabilities."""
    prompt = output.prompt_token_ids
    tokens, prompt_logprobs, token_logprobs = transformers_reference(
        model, inputs, prompt, new_tokens, min_new_tokens
    )
    completion = output.outputs[0]
    assert list(completion.token_ids) == tokens
    served_prompt = [output.prompt_logprobs[k][prompt[k]].logprob for k in range(1, len(prompt))]
    served_tokens = [completion.logprobs[k][token].logprob for k, token in enumerate(tokens)]
    torch.testing.assert_close(torch.tensor(served_prompt), prompt_logprobs, atol=LOGPROB_TOLERANCE, rtol=0)
    torch.testing.assert_close(torch.tensor(served_tokens), token_logprobs, atol=LOGPROB_TOLERANCE, rtol=0)


def chat_on_two_ranks(folder: Path, log: Path, image, question: str, new_tokens: int):
    """One image chat answered by `llava-prumerge serve FOLDER`: vLLM's OpenAI server in its multi-process
    mode with tensor parallelism over two CPU worker processes (greedy, `new_tokens` before any end of
    sequence, with the prompt's token ids and every log-probability)."""
    import openai

    port = _free_port()
    script = Path(sys.executable).parent / "llava-prumerge"
    command = [str(script), "serve", str(folder), "--port", str(port), "--dtype", "float32",
               "--max-model-len", str(ENGINE["max_model_len"]), "--enforce-eager",
               "--kv-cache-memory-bytes", str(ENGINE["kv_cache_memory_bytes"]), "--tensor-parallel-size", "2"]  # fmt: skip
    # one core per rank: the CPU build's automatic binding wants a NUMA node per rank
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", **os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        _wait_until_up(client, server, log)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                                 {"type": "text", "text": question}]}]  # fmt: skip
        return client.chat.completions.create(
            model=str(folder), messages=messages, max_tokens=new_tokens, temperature=0, logprobs=True,
            extra_body={"return_token_ids": True, "prompt_logprobs": 0, "min_tokens": new_tokens},
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)


def assert_chat_reply_as_transformers(
    reply, processor, model, image, question: str, placeholder: str, budget: int
):
    """A chat reply (`chat_on_two_ranks`) has the prompt the folder's chat template and processor make (its text
    and the budget), and the transformers model's greedy tokens and log-probabilities."""
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    text_tokens = len(processor.tokenizer(text.replace(placeholder, ""), add_special_tokens=False).input_ids)
    assert reply.usage.prompt_tokens == text_tokens + budget
    inputs = processor(images=[image], text=text, add_special_tokens=False, return_tensors="pt")
    prompt = reply.prompt_token_ids
    choice = reply.choices[0]
    new_tokens = reply.usage.completion_tokens
    tokens, prompt_logprobs, token_logprobs = transformers_reference(
        model, inputs, prompt, new_tokens, min_new_tokens=new_tokens
    )
    assert choice.token_ids == tokens
    # vLLM's detokenizer holds back a trailing incomplete UTF-8 character (random tokens end in one)
    decoded = processor.tokenizer.decode(tokens, skip_special_tokens=True)
    assert decoded.startswith(choice.message.content or "")
    served_prompt = [reply.prompt_logprobs[k][str(prompt[k])]["logprob"] for k in range(1, len(prompt))]
    served_tokens = [entry.logprob for entry in choice.logprobs.content]
    torch.testing.assert_close(torch.tensor(served_prompt), prompt_logprobs, atol=LOGPROB_TOLERANCE, rtol=0)
    torch.testing.assert_close(torch.tensor(served_tokens), token_logprobs, atol=LOGPROB_TOLERANCE, rtol=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _wait_until_up(client, server: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    import openai

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            client.models.list()
            return
        except (openai.APIConnectionError, openai.APITimeoutError):
            time.sleep(1)
    raise AssertionError(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
