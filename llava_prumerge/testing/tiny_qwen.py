"""Tiny Qwen2.5-VL- and Qwen2-VL-shaped PruMerge models and their inputs, built locally with random weights.

Same family as Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen2-VL-7B-Instruct (a ViT without [CLS] over
native-resolution images in patches two frames deep, 2 x 2 patches merged into each LLM token; Qwen2.5-VL
attends within windows except in its full-attention blocks; a Qwen2 LLM with 3-D rotary positions) at a
size that runs in milliseconds on a CPU: 4 px patches, 8 px merged tokens, images of 16 to 64 px a side.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from ..configuration.configuration_qwen2_5_vl_prumerge import Qwen2_5_VLPruMergeConfig
from ..configuration.configuration_qwen2_vl_prumerge import Qwen2VLPruMergeConfig
from ..modeling.modeling_qwen2_5_vl_prumerge import Qwen2_5_VLPruMergeForConditionalGeneration
from ..modeling.modeling_qwen2_vl_prumerge import Qwen2VLPruMergeForConditionalGeneration
from ..modeling.runtime_compat import TRANSFORMERS_MAJOR
from .tiny import TINY_TEXT_HEADS, tiny_config, tiny_tokenizer

QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_IMAGE = (
    "<|vision_start|><|image_pad|><|vision_end|>"  # an image in a prompt, before the processor expands it
)
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
PATCH, MERGE, TEMPORAL = 4, 2, 2
VISION = {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": PATCH,
          "spatial_merge_size": MERGE, "temporal_patch_size": TEMPORAL, "in_channels": 3}  # fmt: skip
CONFIGS = {
    "qwen2.5-vl": (Qwen2_5_VLPruMergeConfig, {**VISION, "window_size": 16, "out_hidden_size": 64,
                                              "fullatt_block_indexes": [1, 3]}),
    # Qwen2-VL's ViT width is `embed_dim`; its `hidden_size` is the merged tokens' (the LLM's)
    "qwen2-vl": (Qwen2VLPruMergeConfig, {**VISION, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}),
}  # fmt: skip
MODELS = {
    "qwen2.5-vl": Qwen2_5_VLPruMergeForConditionalGeneration,
    "qwen2-vl": Qwen2VLPruMergeForConditionalGeneration,
}


def tiny_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny LLaVA tokenizer with Qwen-VL's vision tokens."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", *QWEN_TOKENS]})
    return tokenizer


def tiny_qwen_image_processor():
    """Qwen-VL's image processor at tiny size: images resized to multiples of 8 px between 16 x 16 and 64 x 64
    (imported here: transformers 5 warns when the name is first resolved without torchvision)."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
        min_pixels=16 * 16,
        max_pixels=64 * 64,
    )


def tiny_qwen_config(
    arch: str = "qwen2.5-vl",
    tokenizer: PreTrainedTokenizerFast | None = None,
    **reduction_fields,
):
    """The tiny model's config (its text head size, 32, is one vLLM's CPU build serves)."""
    tokenizer = tokenizer or tiny_qwen_tokenizer()
    config_class, vision = CONFIGS[arch]
    text = tiny_config(tokenizer).text_config.to_dict()  # the LLM's shapes, as the family's
    for key in ("architectures", "transformers_version", "rope_scaling", "rope_parameters", "model_type"):
        text.pop(key, None)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_TOKENS}
    pairs = (
        text["hidden_size"] // TINY_TEXT_HEADS // 2
    )  # rotary pairs of a head, split over (time, row, column)
    text["rope_scaling"] = {"type": "mrope", "mrope_section": [pairs // 4, 3 * pairs // 8, 3 * pairs // 8]}
    return config_class(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        **reduction_fields,
    )


def tiny_qwen_model(
    arch: str = "qwen2.5-vl",
    seed: int = 0,
    tokenizer=None,
    **reduction_fields,
):
    """A random-weight Qwen2.5-VL (or Qwen2-VL) PruMerge model (float32, eval mode)."""
    torch.manual_seed(seed)
    model = MODELS[arch](tiny_qwen_config(arch, tokenizer, **reduction_fields))
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model.eval()


def tiny_qwen_inputs(
    tokenizer,
    image_processor,
    texts: list[str],
    images: list[list],
    videos: list[list[int]] | None = None,
    seed: int = 0,
):
    """A batch as the Qwen-VL processors build it: each `<image>` in `texts` becomes the vision tokens around as
    many `<|image_pad|>` as the image has merged tokens (`images[i]`: prompt i's images, through the image
    processor); each `<video>` a video of `videos[i]`'s (frame groups, rows, columns) of patches, random
    pixels (the video processor needs torchvision); `mm_token_type_ids` where transformers 5's processor adds it."""
    flat_images = [image for prompt_images in images for image in prompt_images]
    batch, expanded = {}, []
    if flat_images:
        pixels = image_processor(images=flat_images, return_tensors="pt")
        batch["pixel_values"], batch["image_grid_thw"] = pixels["pixel_values"], pixels["image_grid_thw"]
    grids = iter(batch.get("image_grid_thw", torch.zeros(0, 3)).tolist())
    video_grids = [grid for prompt_videos in (videos or [[] for _ in texts]) for grid in prompt_videos]
    video_iter = iter(video_grids)
    for text in texts:
        while "<image>" in text:
            t, h, w = next(grids)
            text = text.replace(
                "<image>",
                "<|vision_start|>" + "<|image_pad|>" * (t * h * w // MERGE**2) + "<|vision_end|>",
                1,
            )
        while "<video>" in text:
            t, h, w = next(video_iter)
            text = text.replace(
                "<video>",
                "<|vision_start|>" + "<|video_pad|>" * (t * h * w // MERGE**2) + "<|vision_end|>",
                1,
            )
        expanded.append(text)
    batch.update(tokenizer(expanded, return_tensors="pt", padding=True))
    batch.pop("token_type_ids", None)
    if video_grids:  # each video's pixels seeded by its grid: the same video alone or in any batch
        clips = [
            torch.randn(
                t * h * w,
                3 * TEMPORAL * PATCH * PATCH,
                generator=torch.Generator().manual_seed(seed + 7 * t + 11 * h + 13 * w),
            )
            for t, h, w in video_grids
        ]
        batch["pixel_values_videos"], batch["video_grid_thw"] = torch.cat(clips), torch.tensor(video_grids)
    if TRANSFORMERS_MAJOR >= 5:  # 5.x's processors return it; 4.x's models do not take it
        ids = batch["input_ids"]
        image_id, video_id = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
        batch["mm_token_type_ids"] = (ids == image_id).int() + 2 * (ids == video_id).int()
    return batch


def tiny_qwen_parts():
    """The tiny models' processor as the parts `export` writes (the stock processor needs torchvision), with the
    vicuna_v1 chat template writing Qwen-VL's vision tokens for images and videos."""
    from ..common.conversation import vicuna_chat_template
    from ..hub_upload.compat import ProcessorParts

    template = vicuna_chat_template(QWEN_IMAGE, QWEN_VIDEO)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = template
    return ProcessorParts(
        tokenizer=tokenizer, image_processor=tiny_qwen_image_processor(), chat_template=template
    )
