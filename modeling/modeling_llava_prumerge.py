# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""LLaVA-1.5 whose language model sees only the PruMerge-reduced visual tokens.

The shared parts do the work (`modeling_prumerge`: the image path, compaction, the language model,
`generate`; `vision_encoding`: the partial CLIP encoder; `token_reduction`: the reducer).
Modifications to the stock classes:
- `LlavaPruMergeModel.visual_tokens`: images -> partial CLIP -> reducer -> projector, one
  [n_i, hidden] tensor per image (the one architecture-specific step).
- `get_image_features`: as stock, with the projected reduced tokens as `pooler_output`.
- `forward` (both classes): the stock signature, delegating to the shared forward; its outputs
  report the compacted attention mask and, per image, the visual-token count and kept patches.
- `generate`: compacts the prompt once, then decodes from it (shared).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
    LlavaPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from .compaction import VisualTokens
from .errors import VisualInputError
from .modeling_prumerge import (
    CompactedModelOutputFields,
    CompactionOutputFields,
    PruMergeForConditionalGenerationMixin,
    PruMergeModelMixin,
)
from .reduction_settings import ReductionSettings
from .runtime_compat import declare_cache_argument, share_checkpoint_layout

# llava-hf checkpoints load unchanged: their weight names map as for stock LLaVA.
share_checkpoint_layout("llava_prumerge", "llava", {"LlavaPruMergeModel": "LlavaModel"})


@dataclass
class LlavaPruMergeModelOutputWithPast(CompactedModelOutputFields, LlavaModelOutputWithPast):
    """[`LlavaModelOutputWithPast`] plus the compaction fields ([`CompactedModelOutputFields`])."""


@dataclass
class LlavaPruMergeCausalLMOutputWithPast(CompactionOutputFields, LlavaCausalLMOutputWithPast):
    """[`LlavaCausalLMOutputWithPast`] plus the compaction fields ([`CompactionOutputFields`]): `logits` has
    the compacted length (with the default `logits_to_keep=0`); position t predicts the token after
    compacted position t."""


class LlavaPruMergeModel(PruMergeModelMixin, LlavaModel):
    """[`LlavaModel`] that feeds the language model the PruMerge-reduced visual tokens."""

    config_class = LlavaPruMergeConfig

    def visual_tokens(
        self,
        pixel_values: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> list[VisualTokens]:
        """Implemented: the images' reduced, projected tokens."""
        if pixel_values is None:
            return []
        if isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0:
            raise VisualInputError(
                "pixel_values holds no image; pass pixel_values=None for text-only prompts"
            )
        return [
            self.tokens_of_images(
                pixel_values, vision_feature_layer, vision_feature_select_strategy, reduction
            )
        ]

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock (the whole vision tower runs, its outputs are returned), but `pooler_output`
        holds the projected reduced tokens, one [n_i, hidden] tensor per image, and `visual_token_centers`
        the patches they came from; transformers 4.x returns that list of tensors alone, as stock 4.x."""
        if kwargs.pop("image_sizes", None) is not None:
            raise VisualInputError(
                "image_sizes is not supported: LLaVA-1.5 images are square and of one size"
            )
        return self.image_features(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, reduction, kwargs
        )

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaPruMergeModelOutputWithPast:
        """Overridden: with `pixel_values` (or image features from `get_image_features` in
        `mm_encoder_outputs`), the language model runs on the compacted prompt; `labels` (optional)
        come back aligned with it."""
        visual_inputs = {
            "pixel_values": pixel_values,
            "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "reduction": reduction,
        }
        return self.compacted_forward(
            LlavaPruMergeModelOutputWithPast, input_ids, attention_mask, position_ids, past_key_values,
            inputs_embeds, labels, mm_encoder_outputs, visual_inputs, kwargs,
        )  # fmt: skip


class LlavaPruMergeForConditionalGeneration(
    PruMergeForConditionalGenerationMixin, LlavaForConditionalGeneration, GenerationMixin
):
    """[`LlavaForConditionalGeneration`] whose LLM sees only the PruMerge-reduced visual tokens."""

    config_class = LlavaPruMergeConfig
    # The reducer calls into the reduction layer's submodules, so vision layers must stay whole.
    _no_split_modules = [
        "CLIPEncoderLayer",
        "CLIPVisionEmbeddings",
        "LlavaMultiModalProjector",
        "LlamaDecoderLayer",
    ]

    def __init__(self, config: LlavaPruMergeConfig):
        LlavaPreTrainedModel.__init__(self, config)  # the stock __init__, with the PruMerge base model
        self.model = LlavaPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        """The base model's (see `LlavaPruMergeModel.get_image_features`)."""
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaPruMergeCausalLMOutputWithPast:
        """Overridden: with visual inputs, the base model compacts the sequence (and `labels`); see
        [`LlavaPruMergeCausalLMOutputWithPast`] for what the returned length means."""
        model_inputs = {
            "input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask,
            "position_ids": position_ids, "past_key_values": past_key_values, "inputs_embeds": inputs_embeds,
            "vision_feature_layer": vision_feature_layer, "vision_feature_select_strategy": vision_feature_select_strategy,
            "mm_encoder_outputs": mm_encoder_outputs, "reduction": reduction,
        }  # fmt: skip
        return self.head_forward(
            LlavaPruMergeCausalLMOutputWithPast, labels, logits_to_keep, model_inputs, kwargs
        )


__all__ = ["LlavaPruMergeForConditionalGeneration", "LlavaPruMergeModel"]
