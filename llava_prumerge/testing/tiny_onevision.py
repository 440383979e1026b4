"""A tiny LLaVA-OneVision-shaped PruMerge model and processor, built locally with random weights.

Same family as llava-hf/llava-onevision-qwen2-7b-ov-hf (SigLIP tower without [CLS], every row read at
the last layer, AnyRes over a grid of crops with `anyres_max_<n>` shrinking, multi-image prompts seen as
base views, videos pooled 2 x 2 per frame, `image_newline`, Qwen2 LLM) at a size that runs in
milliseconds on a CPU: 56 px views of 14 x 14 patches, grids of up to 3 x 3 crops, and `anyres_max_2`
so that a 2 x 2 grid is already shrunk (the 7B model shrinks past 9 crops' patches).
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedTokenizerFast

from ..configuration.configuration_llava_onevision_prumerge import LlavaOnevisionPruMergeConfig
from ..modeling.modeling_llava_onevision_prumerge import LlavaOnevisionPruMergeForConditionalGeneration
from .tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_config, tiny_siglip_vision_config
from .tiny_video import make_clip, tiny_video_tokenizer

SIZE = TINY_IMAGE_SIZE
TINY_ONEVISION_PINPOINTS = [[SIZE * rows, SIZE * cols] for rows in range(1, 4) for cols in range(1, 4)]
TINY_ASPECT_RATIO = "anyres_max_2"
TINY_PATCHES = (SIZE // TINY_PATCH_SIZE) ** 2
TINY_POOLED = math.ceil(SIZE / TINY_PATCH_SIZE / 2) ** 2  # a video frame's tokens after 2 x 2 pooling


def tiny_onevision_image_processor():
    """LLaVA-OneVision's image processor at tiny size (imported here: transformers 5 warns when the name is
    first resolved without torchvision, and falls back to the PIL one)."""
    from transformers import LlavaOnevisionImageProcessor

    return LlavaOnevisionImageProcessor(
        size={"height": SIZE, "width": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_grid_pinpoints=TINY_ONEVISION_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5],  # SigLIP's normalization
        image_std=[0.5, 0.5, 0.5],
    )


def tiny_onevision_processor(tokenizer: PreTrainedTokenizerFast | None = None):
    """Stock `LlavaOnevisionProcessor` for images (its video processor needs torchvision, which the test
    environments lack: videos are expanded by `video_prompt` instead)."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyProcessor(LlavaOnevisionProcessor):
        """The stock processor without a video processor (both majors build one from __init__'s parameters
        or `attributes`)."""

        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, **kwargs):
            super().__init__(image_processor, tokenizer, **kwargs)

    tokenizer = tokenizer or tiny_video_tokenizer()
    return ImageOnlyProcessor(
        image_processor=tiny_onevision_image_processor(),
        tokenizer=tokenizer,
        num_image_tokens=TINY_PATCHES,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=TINY_ASPECT_RATIO,
        chat_template=tokenizer.chat_template,
    )


def tiny_onevision_config(
    tokenizer: PreTrainedTokenizerFast | None = None, **reduction_fields
) -> LlavaOnevisionPruMergeConfig:
    """The tiny model's config (its text head size, 32, is one vLLM's CPU build serves)."""
    tokenizer = tokenizer or tiny_video_tokenizer()
    llava = tiny_config(tokenizer)  # the same LLM shapes, as a Qwen2
    text_config = {**llava.text_config.to_dict(), "model_type": "qwen2"}
    for key in ("architectures", "transformers_version", "rope_scaling", "rope_parameters"):
        text_config.pop(key, None)
    return LlavaOnevisionPruMergeConfig(
        vision_config=tiny_siglip_vision_config(),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=TINY_ONEVISION_PINPOINTS,
        vision_aspect_ratio=TINY_ASPECT_RATIO,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        **reduction_fields,
    )


def tiny_onevision_model(
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **reduction_fields,
):
    """A random-weight `LlavaOnevisionPruMergeForConditionalGeneration` (float32, eval mode)."""
    torch.manual_seed(seed)
    model = LlavaOnevisionPruMergeForConditionalGeneration(
        tiny_onevision_config(tokenizer, **reduction_fields)
    )
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model.eval()


def video_prompt(text: str, num_frames: int, tokenizer_video_token: str = "<video>") -> str:
    """`text` with each `<video>` expanded as `LlavaOnevisionProcessor` expands it: every frame's pooled
    tokens and one newline."""
    return text.replace(tokenizer_video_token, tokenizer_video_token * (num_frames * TINY_POOLED + 1))


def tiny_onevision_inputs(
    processor, texts: list[str], images: list[list], videos: torch.Tensor | None = None
):
    """A batch as `LlavaOnevisionProcessor` builds it, for prompts that may hold videos too (whose processor
    needs torchvision): each `<image>` expanded to the count the stock processor writes for it (alone in its
    prompt: counted by the processor itself; in a multi-image prompt: base view and newline), each `<video>`
    to `videos`' frames' pooled tokens and a newline; `images[i]` are the images of prompt i."""
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    expanded = []
    for text, prompt_images in zip(texts, images, strict=True):
        for image in prompt_images:
            if len(prompt_images) == 1:
                alone = processor(images=[image], text="<image>", return_tensors="pt")["input_ids"]
                count = int((alone == image_token_id).sum())
            else:
                count = TINY_PATCHES + 1
            text = text.replace("<image>", "<IMAGE>" * count, 1)
        if videos is not None:
            text = video_prompt(text, videos.shape[1])
        expanded.append(text.replace("<IMAGE>", "<image>"))
    batch = dict(processor.tokenizer(expanded, return_tensors="pt", padding=True))
    flat = [image for prompt_images in images for image in prompt_images]
    if flat:
        pixels = processor.image_processor(images=flat, return_tensors="pt")
        batch["pixel_values"], batch["image_sizes"] = pixels["pixel_values"], pixels["image_sizes"]
        batch["batch_num_images"] = torch.tensor([len(prompt_images) for prompt_images in images])
    if videos is not None:
        batch["pixel_values_videos"] = videos
    return batch


def tiny_clips(processor, count: int, num_frames: int = 4, seed: int = 0) -> torch.Tensor:
    """[count, num_frames, 3, 56, 56]: synthetic clips (`make_clip`), each frame preprocessed as
    the base view of an image."""
    frames = [frame for clip in range(count) for frame in make_clip(seed + clip, num_frames)]
    views = processor.image_processor(images=frames, return_tensors="pt")["pixel_values"][:, 0]
    return views.reshape(count, num_frames, *views.shape[1:])


def tiny_onevision_parts():
    """The tiny model's processor as the parts `export` writes (the stock processor needs torchvision)."""
    from ..hub_upload.compat import ProcessorParts

    tokenizer = tiny_video_tokenizer()
    return ProcessorParts(
        tokenizer=tokenizer,
        image_processor=tiny_onevision_image_processor(),
        vision_feature_select_strategy="full",
        image_token="<image>",
        video_token="<video>",
        chat_template=tokenizer.chat_template,
        num_image_tokens=TINY_PATCHES,
        vision_aspect_ratio=TINY_ASPECT_RATIO,
    )
