"""The vicuna_v1 format: the chat template Hub folders ship, the renderer training uses, and the training
data loader, all produce the same text."""

import pytest

from llava_prumerge.common.conversation import VICUNA_CHAT_TEMPLATE, VICUNA_V1_SYSTEM, render_vicuna_v1
from llava_prumerge.training.data import build_conversation

CONVERSATIONS = {
    "one image": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
    "text only": [{"role": "user", "content": "Hello there."}],
    "an image and a video (Video-LLaVA)": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Then"}, {"type": "image"}]}
    ],
    "system, two turns, two images": [
        {"role": "system", "content": VICUNA_V1_SYSTEM},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}],
        },
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Colors."}]},
    ],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_chat_template_and_the_renderer_agree(tokenizer, name, add_generation_prompt):
    assert tokenizer.chat_template == VICUNA_CHAT_TEMPLATE
    messages = CONVERSATIONS[name]
    templated = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert render_vicuna_v1(messages, add_generation_prompt).text == templated


def test_answer_spans_cover_each_answer_and_its_end_of_turn():
    rendered = render_vicuna_v1(CONVERSATIONS["system, two turns, two images"])
    assert [rendered.text[start:end] for start, end in rendered.answer_spans] == [
        "They differ.</s>",
        "Colors.</s>",
    ]


def test_training_samples_render_as_the_chat_template_renders_them(tmp_path, tokenizer):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    sample = {
        "id": "x",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "What is it?\n<image>"},
            {"from": "gpt", "value": "A square."},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": "Yes."},
        ],
    }
    conversation = build_conversation(sample, 0, tmp_path)
    messages = [
        {"role": "system", "content": VICUNA_V1_SYSTEM},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert conversation.text == tokenizer.apply_chat_template(messages, tokenize=False)
