"""A tiny Video-LLaVA-shaped PruMerge model, tokenizer and processors, built locally with random weights.

Same family as LanguageBind/Video-LLaVA-7B-hf (CLIP image and video towers, layer -2 features, frames'
[CLS] tokens kept in video features, 2-layer GELU projector, Llama LLM, `<image>` and `<video>`
tokens) at a size that runs in milliseconds on a CPU; the towers share the LLaVA tiny model's shapes.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import PreTrainedTokenizerFast, VideoLlavaImageProcessor

from ..configuration.configuration_video_llava_prumerge import VideoLlavaPruMergeConfig
from ..modeling.modeling_video_llava_prumerge import VideoLlavaPruMergeForConditionalGeneration
from .tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_config, tiny_tokenizer

TINY_VIDEO_FRAMES = 8  # as Video-LLaVA samples videos
TINY_PATCHES = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2


def tiny_video_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny LLaVA tokenizer with Video-LLaVA's `<video>` token as well."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    return tokenizer


def tiny_video_image_processor() -> VideoLlavaImageProcessor:
    """Video-LLaVA's image processor (resize the shortest edge, center crop, CLIP normalization) at tiny size."""
    return VideoLlavaImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )


def tiny_video_processor(tokenizer: PreTrainedTokenizerFast | None = None):
    """Stock `VideoLlavaProcessor` with the image and the video processor (the latter needs torchvision)."""
    from transformers import VideoLlavaProcessor, VideoLlavaVideoProcessor

    size = {
        "size": {"shortest_edge": TINY_IMAGE_SIZE},
        "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    }
    return VideoLlavaProcessor(
        image_processor=tiny_video_image_processor(),
        video_processor=VideoLlavaVideoProcessor(**size),
        tokenizer=tokenizer or tiny_video_tokenizer(),
        patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tiny_video_config(
    tokenizer: PreTrainedTokenizerFast | None = None, **reduction_fields
) -> VideoLlavaPruMergeConfig:
    tokenizer = tokenizer or tiny_video_tokenizer()
    llava = tiny_config(tokenizer)  # the same towers and LLM shapes
    return VideoLlavaPruMergeConfig(
        vision_config=llava.vision_config.to_dict(),
        text_config=llava.text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_seq_length=TINY_PATCHES,
        video_seq_length=TINY_VIDEO_FRAMES * (TINY_PATCHES + 1),
        pad_token_id=tokenizer.pad_token_id,
        **reduction_fields,
    )


def tiny_video_model(seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None, **reduction_fields):
    """A random-weight `VideoLlavaPruMergeForConditionalGeneration` (float32, eval mode)."""
    torch.manual_seed(seed)
    model = VideoLlavaPruMergeForConditionalGeneration(tiny_video_config(tokenizer, **reduction_fields))
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model.eval()


def make_clip(
    seed: int, frames: int = TINY_VIDEO_FRAMES, width: int = 64, height: int = 48
) -> list[Image.Image]:
    """A synthetic clip: bright shapes moving in straight lines over a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    shapes = [
        (rng.integers(0, width), rng.integers(0, height), rng.integers(-4, 5), rng.integers(-3, 4),
         tuple(int(c) for c in rng.integers(150, 256, 3)), bool(rng.integers(0, 2)))
        for _ in range(1 + seed % 3)
    ]  # fmt: skip
    clip = []
    for frame in range(frames):
        picture = Image.fromarray(background.copy())
        draw = ImageDraw.Draw(picture)
        for x, y, dx, dy, color, round_shape in shapes:
            left, top = (x + dx * frame) % width, (y + dy * frame) % height
            box = (left, top, left + width // 6, top + height // 5)
            (draw.ellipse if round_shape else draw.rectangle)(box, fill=color)
        clip.append(picture)
    return clip
