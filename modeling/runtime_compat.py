# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Every transformers 4.57 / 5.x difference the package depends on, each as one named probe.

Probes read the installed classes (their signatures and fields) rather than version numbers where
they can, so a release that renames something is detected by what it does. Nothing else in the
package probes versions. This module travels inside Hub folders as remote code: it imports only
torch, transformers and the standard library, and the package-side probes import lazily.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import transformers
from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
)
from transformers.models.video_llava.modeling_video_llava import VideoLlavaForConditionalGeneration

from .errors import PruMergeError

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

# transformers 5.24 renamed the KV-cache argument (and output field) `past_key_values` to `cache`.
CACHE_ARGUMENT = (
    "cache"
    if "cache" in inspect.signature(LlavaForConditionalGeneration.forward).parameters
    else "past_key_values"
)
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")

# transformers 5.24 reports the encoders' outputs (`image_outputs.pooler_output`) instead of the
# projected features (`image_hidden_states`) in the LLaVA-family output classes.
ENCODER_OUTPUTS_IN_OUTPUTS = "image_outputs" in {
    field.name for field in dataclasses.fields(LlavaCausalLMOutputWithPast)
}

# transformers 5's `generate` takes visual tokens encoded before the prefill as `mm_encoder_outputs` (by
# modality), hands them to the prefill forward only, expands them for beams and gives them to assistants.
GENERATE_TAKES_ENCODER_OUTPUTS = (
    "mm_encoder_outputs" in inspect.signature(LlavaForConditionalGeneration.forward).parameters
)

# transformers 5 returns a ModelOutput from `get_image_features` (the per-image list in `pooler_output`);
# 4.x returns the list itself.
IMAGE_FEATURES_AS_OUTPUT = TRANSFORMERS_MAJOR >= 5

# transformers 5.23 renamed Video-LLaVA's image input `pixel_values_images` to `pixel_values`.
VIDEO_LLAVA_IMAGES_ARGUMENT = (
    "pixel_values"
    if "pixel_values" in inspect.signature(VideoLlavaForConditionalGeneration.forward).parameters
    else "pixel_values_images"
)

# transformers 4.x has AutoModelForVision2Seq and pipeline("image-to-text") for LLaVA; 5.x has neither.
HAS_VISION2SEQ = hasattr(transformers, "AutoModelForVision2Seq")


def image_text_auto_classes() -> list:
    """The Auto classes an image-text-to-text model registers with (4.x also AutoModelForVision2Seq)."""
    classes = [transformers.AutoModelForImageTextToText]
    if HAS_VISION2SEQ:
        classes.append(transformers.AutoModelForVision2Seq)
    return classes


def encoder_layer_mask_kwargs(layer: nn.Module) -> dict:
    """The (empty) mask arguments of a CLIP-style encoder layer: 4.x also takes `causal_attention_mask`.

    Read once per forward, not once per layer: `inspect` costs tens of microseconds a call.
    """
    if "causal_attention_mask" in inspect.signature(layer.forward).parameters:
        return {"attention_mask": None, "causal_attention_mask": None}
    return {"attention_mask": None}


def share_checkpoint_layout(model_type: str, stock_model_type: str, class_pairs: dict[str, str]) -> None:
    """Load checkpoints of `model_type` with the weight-name mapping of `stock_model_type`.

    transformers 5 keys its conversion mappings by model type and class name; 4.x uses the
    `_checkpoint_conversion_mapping` the stock classes define, which our subclasses inherit.
    """
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:  # transformers 4.x
        return
    pairs = {model_type: stock_model_type, **class_pairs}
    for ours, stock in pairs.items():
        register_checkpoint_conversion_mapping(ours, get_checkpoint_conversion_mapping(stock), overwrite=True)


def declare_cache_argument(forward):
    """Show `forward`'s KV-cache parameter under the installed name: its code takes `past_key_values`, and
    `pop_cache` finds the cache under either name, but transformers reads the name off the signature."""
    if CACHE_ARGUMENT != "past_key_values":
        signature = inspect.signature(forward)
        parameters = [
            parameter.replace(name=CACHE_ARGUMENT) if parameter.name == "past_key_values" else parameter
            for parameter in signature.parameters.values()
        ]
        forward.__signature__ = signature.replace(parameters=parameters)
    return forward


def cache_length(cache) -> int:
    """Tokens a KV cache holds (0 for none, or for a legacy tuple cache's absence)."""
    return cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0


# transformers 5's generate builds (and extends each step) `position_ids` before the first forward; 4.x leaves
# them to each model's `prepare_inputs_for_generation`.
GENERATE_BUILDS_POSITIONS = hasattr(GenerationMixin, "_prepare_position_ids_for_generation")


def pop_cache(kwargs: dict, past_key_values=None):
    """The KV cache, whichever name it was passed under (the old one with the deprecation warning stock
    models give); both at once is an error."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise PruMergeError("Pass the KV cache once: as `cache` or as `past_key_values`, not both")
    if past_key_values is not None and CACHE_ARGUMENT == "cache":
        warnings.warn(
            "`past_key_values` is deprecated: pass the KV cache as `cache`", FutureWarning, stacklevel=3
        )
    return cache if cache is not None else past_key_values


def training_argument_names() -> dict[str, str]:
    """TrainingArguments field names: 5.x folded `warmup_ratio` into `warmup_steps` (a float below 1
    is a ratio) and renamed `gradient_checkpointing` to `activation_checkpointing`."""
    fields = {field.name for field in dataclasses.fields(transformers.TrainingArguments)}
    return {
        "warmup_ratio": "warmup_ratio" if "warmup_ratio" in fields else "warmup_steps",
        "gradient_checkpointing": (
            "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
        ),
    }


def extra_special_tokens(tokenizer) -> list[str]:
    """A tokenizer's extra special tokens: 4.x `additional_special_tokens`, renamed `extra_special_tokens` in 5.x."""
    listed = getattr(tokenizer, "additional_special_tokens", None)
    if listed is None:
        listed = getattr(tokenizer, "extra_special_tokens", None) or []
    return [str(token) for token in listed]


def encoder_output_fields(modality: str, per_item: list) -> dict:
    """The output field that reports one modality's projected visual tokens (`image` or `video`)."""
    if ENCODER_OUTPUTS_IN_OUTPUTS:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {f"{modality}_outputs": BaseModelOutputWithPooling(pooler_output=per_item)}
    import torch

    return {f"{modality}_hidden_states": torch.cat(per_item, dim=0)}  # [sum n_i, hidden]


def vision_window_index(tower, grid_thw):
    """Qwen2.5-VL's window order of the merged tokens (slot -> merged token), as its tower computes it; None
    for a tower without windows (Qwen2-VL). transformers 4.x: a method of the tower; 5.x: a function."""
    if not getattr(tower.config, "fullatt_block_indexes", None):
        return None
    if hasattr(tower, "get_window_index"):  # transformers 4.x
        return tower.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    window_size, merge, patch = tower.window_size, tower.spatial_merge_size, tower.patch_size
    return get_vision_window_index(grid_thw, merge, window_size, patch)[0]


def stock_output_classes(module, prefix: str) -> tuple[type, type]:
    """(base model output, head output) of a stock modeling module: transformers 4.x's own
    (`{prefix}ModelOutputWithPast`, `{prefix}CausalLMOutputWithPast`), else 5.x's shared multimodal ones."""
    own = getattr(module, f"{prefix}ModelOutputWithPast", None)
    if own is not None:
        return own, getattr(module, f"{prefix}CausalLMOutputWithPast")
    from transformers.modeling_outputs import (
        MultimodalBaseModelOutputWithPast,
        MultimodalCausalLMOutputWithPast,
    )

    return MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
