# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""LLaVA-NeXT (AnyRes) whose language model sees only the PruMerge-reduced visual tokens.

Each view keeps CLIP's [CLS] token, so PruMerge applies per view with the view's own [CLS]
attention, and the reduced views are laid out in stock's order (`anyres`: the base view, then the
crops' kept tokens in the raster order of the unpadded map, one `image_newline` per row of crops):
what the model learned about order and row ends still holds, where a layout per crop or a merged
whole map would show it sequences it never saw. Budgets: adaptive per view, or `num_visual_tokens`
for the whole image (newlines included), shared by the views in proportion to their patches.

Modifications to the stock classes, beside the shared parts (`modeling_prumerge`):
- `LlavaNextPruMergeModel.visual_tokens`: AnyRes views -> partial CLIP -> per-view reducer -> layout.
- `get_image_features`: as stock, with the reduced, laid-out tokens per image as `pooler_output`.
- `forward` (both classes): the stock signatures, delegating to the shared forward.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextCausalLMOutputWithPast,
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    LlavaNextModelOutputWithPast,
    LlavaNextPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_llava_next_prumerge import LlavaNextPruMergeConfig
from .anyres import AnyresLayout, AnyresModelMixin, ReducedViews, used_views
from .compaction import VisualTokens
from .modeling_prumerge import (
    CompactedModelOutputFields,
    CompactionOutputFields,
    PruMergeForConditionalGenerationMixin,
    PruMergeModelMixin,
    visual_features_output,
)
from .reduction_settings import ReductionSettings
from .runtime_compat import declare_cache_argument, share_checkpoint_layout
from .vision_encoding import patches_from_hidden_states

# llava-hf LLaVA-NeXT checkpoints load unchanged: their weight names map as for stock LLaVA-NeXT.
share_checkpoint_layout("llava_next_prumerge", "llava_next", {"LlavaNextPruMergeModel": "LlavaNextModel"})


@dataclass
class LlavaNextPruMergeModelOutputWithPast(CompactedModelOutputFields, LlavaNextModelOutputWithPast):
    """[`LlavaNextModelOutputWithPast`] plus the compaction fields; `visual_token_centers` rows are (view, patch)."""


@dataclass
class LlavaNextPruMergeCausalLMOutputWithPast(CompactionOutputFields, LlavaNextCausalLMOutputWithPast):
    """[`LlavaNextCausalLMOutputWithPast`] plus the compaction fields: `logits` has the compacted length."""


class LlavaNextPruMergeModel(AnyresModelMixin, PruMergeModelMixin, LlavaNextModel):
    """[`LlavaNextModel`] that feeds the language model the PruMerge-reduced tokens of every AnyRes view."""

    config_class = LlavaNextPruMergeConfig
    model_name = "LLaVA-NeXT"

    def stock_image_length(self, layout: AnyresLayout) -> int:
        """Implemented: the base view's patches, then the unpadded crop map with a newline per patch row."""
        return layout.side * layout.side + layout.stock_length

    def visual_tokens(
        self,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> list[VisualTokens]:
        """Implemented: per image, its views' reduced tokens, projected and laid out as stock orders them."""
        if pixel_values is None:
            return []
        layouts = self.image_layouts(pixel_values, image_sizes)
        encoded, settings = self.encode_views(
            pixel_values, layouts, vision_feature_layer, vision_feature_select_strategy, reduction
        )
        return [self.tokens_of_views(encoded, layouts, image_sizes, settings, vision_feature_select_strategy)]

    def tokens_of_views(self, encoded, layouts, image_sizes, settings, strategy) -> VisualTokens:
        """The images' tokens from their encoded views: reduced, projected and laid out."""
        return self.anyres_tokens(self.reduce_images(encoded, layouts, settings), image_sizes, strategy)

    def anyres_tokens(self, reduced: ReducedViews, image_sizes, strategy: str | None = None) -> VisualTokens:
        """Reduced views projected and laid out per image, ready for compaction: stock's packing without
        reduction, else `lay_out`."""
        layouts = reduced.layouts
        expanded = [self.stock_image_length(layout) for layout in layouts]  # base view, then crops
        if reduced.views is None:
            views = [layout.num_views for layout in layouts]
            projected = self.multi_modal_projector(torch.stack(reduced.unreduced.features))
            features, _ = self.pack_image_features(
                list(projected.split(views)), image_sizes,
                strategy or self.config.vision_feature_select_strategy, image_newline=self.image_newline,
            )  # fmt: skip
            return VisualTokens(
                "image", self.config.image_token_id, list(features), expanded, [None] * len(features)
            )
        features, centers = self.lay_out_images(reduced)
        return VisualTokens("image", self.config.image_token_id, features, expanded, centers)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock (the whole tower runs on every view, its outputs are returned), with the reduced,
        laid-out tokens, one [n_i, hidden] tensor per image, as `pooler_output`; 4.x: that list alone."""
        layouts = self.image_layouts(pixel_values, image_sizes)
        feature_layer, keep_class_token, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        outputs, hidden_states = self.run_whole_tower(
            self.vision_tower, used_views(pixel_values, layouts), kwargs
        )
        encoded = patches_from_hidden_states(
            self.vision_tower, hidden_states, feature_layer, keep_class_token, settings
        )
        tokens = self.tokens_of_views(encoded, layouts, image_sizes, settings, vision_feature_select_strategy)
        return visual_features_output(tokens, **outputs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
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
    ) -> LlavaNextPruMergeModelOutputWithPast:
        """Overridden: with images (raw, or features in `mm_encoder_outputs`), the language model runs on the
        compacted prompt; `labels` (optional) come back aligned with it."""
        visual_inputs = {
            "pixel_values": pixel_values,
            "image_sizes": image_sizes,
            "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "reduction": reduction,
        }
        return self.compacted_forward(
            LlavaNextPruMergeModelOutputWithPast, input_ids, attention_mask, position_ids, past_key_values,
            inputs_embeds, labels, mm_encoder_outputs, visual_inputs, kwargs,
        )  # fmt: skip


class LlavaNextPruMergeForConditionalGeneration(
    PruMergeForConditionalGenerationMixin, LlavaNextForConditionalGeneration, GenerationMixin
):
    """[`LlavaNextForConditionalGeneration`] whose LLM sees only the PruMerge-reduced tokens of every view."""

    config_class = LlavaNextPruMergeConfig
    visual_input_names = ("pixel_values",)
    visual_option_names = ("image_sizes",)
    # The reducer calls into the reduction layer's submodules, so vision layers must stay whole.
    _no_split_modules = [
        "CLIPEncoderLayer",
        "CLIPVisionEmbeddings",
        "LlavaNextMultiModalProjector",
        "LlamaDecoderLayer",
    ]

    def __init__(self, config: LlavaNextPruMergeConfig):
        LlavaNextPreTrainedModel.__init__(self, config)  # the stock __init__, with the PruMerge base model
        self.model = LlavaNextPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ):
        """The base model's (see `LlavaNextPruMergeModel.get_image_features`)."""
        return self.model.get_image_features(pixel_values, image_sizes, **kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
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
    ) -> LlavaNextPruMergeCausalLMOutputWithPast:
        """Overridden: with images, the base model compacts the sequence (and `labels`); `logits` has the
        compacted length."""
        model_inputs = {
            "input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes,
            "attention_mask": attention_mask, "position_ids": position_ids, "past_key_values": past_key_values,
            "inputs_embeds": inputs_embeds, "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "mm_encoder_outputs": mm_encoder_outputs, "reduction": reduction,
        }  # fmt: skip
        return self.head_forward(
            LlavaNextPruMergeCausalLMOutputWithPast, labels, logits_to_keep, model_inputs, kwargs
        )


__all__ = ["LlavaNextPruMergeForConditionalGeneration", "LlavaNextPruMergeModel"]
