"""What the vLLM tests compare: a served request against the transformers model on the same folder.

vLLM's prompts hold each item's budget of placeholders; the transformers model compacts a stock prompt to
the same layout, so its logits line up with vLLM's prompt token for token. Log-probabilities are
compared, not only greedy tokens: on tiny random-weight models, serving the reduced tokens in another
order left all greedy tokens unchanged but moved the log-probabilities by 3e-3 to 0.17, while float32
vLLM and transformers on one CPU agree to 5e-7.
"""

from __future__ import annotations

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
