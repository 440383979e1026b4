"""LLaVA-1.5's conversation format (vicuna_v1), in one place: the chat template Hub folders ship and the
renderer training uses, which produce the same text (a test holds them to it).

    SYSTEM USER: <image>\\nquestion ASSISTANT: answer</s>USER: ... ASSISTANT: answer</s>

A user turn puts its images and videos first, one `<image>\\n` or `<video>\\n` each (Video-LLaVA's
format), then its text; only the answers and their `</s>` carry labels in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_PLACEHOLDER = "<image>"
# The placeholder a user turn writes for each visual item, by content type.
VISUAL_PLACEHOLDERS = {"image": IMAGE_PLACEHOLDER, "video": "<video>"}
END_OF_TURN = "</s>"
# LLaVA's conv_vicuna_v1 system prompt, which LLaVA-1.5's instruction tuning used.
VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def vicuna_chat_template(image: str = IMAGE_PLACEHOLDER, video: str = VISUAL_PLACEHOLDERS["video"]) -> str:
    """The vicuna_v1 chat template, a user turn's visual items written as `image` / `video` (Qwen-VL models
    write their vision tokens around one placeholder, `<|vision_start|><|image_pad|><|vision_end|>`)."""
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
        "else message['content'][0]['text'] }} "
        "{% elif message['role'] == 'user' %}USER: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}" + image + "\n"
        "{% elif item['type'] == 'video' %}" + video + "\n{% endif %}"
        "{% endfor %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
        "{% endif %}{% endfor %}{% endif %} "
        "{% elif message['role'] == 'assistant' %}ASSISTANT: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
        "{% endif %}{% endfor %}{% endif %}</s>"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


VICUNA_CHAT_TEMPLATE = vicuna_chat_template()


@dataclass
class RenderedConversation:
    """A conversation's prompt text and the character spans that carry labels."""

    text: str
    answer_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each answer + </s>


def _content_text(content, role: str) -> str:
    """The text of a message as VICUNA_CHAT_TEMPLATE writes it (images and videos first in user turns)."""
    if isinstance(content, str):
        return content
    if role == "system":
        return content[0]["text"]
    visual = [
        VISUAL_PLACEHOLDERS[item["type"]] + "\n" for item in content if item["type"] in VISUAL_PLACEHOLDERS
    ]
    return "".join(visual if role == "user" else []) + "".join(
        item["text"] for item in content if item["type"] == "text"
    )


def render_vicuna_v1(messages: list[dict], add_generation_prompt: bool = False) -> RenderedConversation:
    """Chat messages (role system/user/assistant; content a string or a list of {"type": ...} items)
    as VICUNA_CHAT_TEMPLATE renders them, with the span of every assistant answer."""
    rendered = RenderedConversation("")
    for message in messages:
        role, text = message["role"], _content_text(message["content"], message["role"])
        if role == "system":
            rendered.text += text + " "
        elif role == "user":
            rendered.text += f"USER: {text} "
        elif role == "assistant":
            rendered.text += "ASSISTANT: "
            start = len(rendered.text)
            rendered.text += text + END_OF_TURN
            rendered.answer_spans.append((start, len(rendered.text)))
    if add_generation_prompt:
        rendered.text += "ASSISTANT:"
    return rendered
