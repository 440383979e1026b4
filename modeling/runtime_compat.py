"""Every transformers 4.57 / 5.x difference the package depends on, each as one named probe.

Probes read the installed classes (their signatures and fields) rather than version numbers where
they can, so a release that renames something is detected by what it does. Nothing else in the
package probes versions. This module travels inside Hub folders as remote code: it imports only
torch, transformers and the standard library, and the package-side probes import lazily.
"""

from __future__ import annotations

import dataclasses
import inspect

import transformers
from torch import nn
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
)

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

# transformers 5 returns a ModelOutput from `get_image_features` (the per-image list in `pooler_output`);
# 4.x returns the list itself.
IMAGE_FEATURES_AS_OUTPUT = TRANSFORMERS_MAJOR >= 5

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


def pop_cache(kwargs: dict, past_key_values=None):
    """The KV cache, whichever name it was passed under; both at once is an error."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise PruMergeError("Pass the KV cache once: as `cache` or as `past_key_values`, not both")
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


def image_features_output(per_image: list, **fields):
    """What `get_image_features` returns: 5.x a BaseModelOutputWithPooling, 4.x the per-image list."""
    if IMAGE_FEATURES_AS_OUTPUT:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=per_image, **fields)
    return per_image


def encoder_output_fields(modality: str, per_item: list) -> dict:
    """The output field that reports one modality's projected visual tokens (`image` or `video`)."""
    if ENCODER_OUTPUTS_IN_OUTPUTS:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {f"{modality}_outputs": BaseModelOutputWithPooling(pooler_output=per_item)}
    import torch

    return {f"{modality}_hidden_states": torch.cat(per_item, dim=0)}  # [sum n_i, hidden]
