"""A tiny LLaVA-NeXT-shaped PruMerge model and processor, built locally with random weights.

Same family as llava-hf/llava-v1.6-vicuna-7b-hf (CLIP tower keeping [CLS], AnyRes: a base view plus a
grid of crops chosen among `image_grid_pinpoints`, unpadding, `image_newline`, Llama LLM) at a size
that runs in milliseconds on a CPU: 56 px views of 14 x 14 patches, grids of up to 2 x 2 crops.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from ..common.conversation import VICUNA_CHAT_TEMPLATE
from ..configuration.configuration_llava_next_prumerge import LlavaNextPruMergeConfig
from ..modeling.modeling_llava_next_prumerge import LlavaNextPruMergeForConditionalGeneration
from .tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_config, tiny_tokenizer

SIZE = TINY_IMAGE_SIZE
TINY_GRID_PINPOINTS = [[SIZE, 2 * SIZE], [2 * SIZE, SIZE], [2 * SIZE, 2 * SIZE]]  # as llava-v1.6's, scaled


def tiny_next_processor(tokenizer: PreTrainedTokenizerFast | None = None):
    """LlavaNextProcessor for the tiny model (imported here: transformers 5 warns when the name is first
    resolved without torchvision, which every user of this module would otherwise see)."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_grid_pinpoints=TINY_GRID_PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or tiny_tokenizer(),
        patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )


def tiny_next_config(
    tokenizer: PreTrainedTokenizerFast | None = None, **reduction_fields
) -> LlavaNextPruMergeConfig:
    """The tiny model's config (its text head size, 32, is one vLLM's CPU build serves)."""
    tokenizer = tokenizer or tiny_tokenizer()
    llava = tiny_config(tokenizer)  # the same tower and LLM shapes
    return LlavaNextPruMergeConfig(
        vision_config=llava.vision_config.to_dict(),
        text_config=llava.text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=TINY_GRID_PINPOINTS,
        image_seq_length=(SIZE // TINY_PATCH_SIZE) ** 2,
        pad_token_id=tokenizer.pad_token_id,
        **reduction_fields,
    )


def tiny_next_model(
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **reduction_fields,
):
    """A random-weight `LlavaNextPruMergeForConditionalGeneration` (float32, eval mode)."""
    torch.manual_seed(seed)
    model = LlavaNextPruMergeForConditionalGeneration(tiny_next_config(tokenizer, **reduction_fields))
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model.eval()
