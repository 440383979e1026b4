# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Qwen2.5-VL whose language model sees only the PruMerge-reduced image and video tokens.

Its ViT has no [CLS] token, attends within windows except in its full-attention blocks, and merges 2 x 2
patches into each token the LLM sees; the LLM places visual tokens by 3-D rotary positions (mRoPE). Each image, and each frame group of a video, is reduced over its merged tokens (`qwen_vision`),
and every token keeps the 3-D rotary position of its place (`qwen_vl`).

Modifications to the stock classes, beside the shared parts (`modeling_prumerge`, `qwen_vision`, `qwen_vl`):
- `Qwen2_5_VLPruMergeModel.visual_tokens`: the whole tower as stock, the reducer per attention sequence.
- `get_image_features` / `get_video_features`: as stock, with the reduced tokens per item as `pooler_output`.
- `forward` (both classes): the stock signatures, delegating to the shared forward.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as stock
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_qwen2_5_vl_prumerge import Qwen2_5_VLPruMergeConfig
from .modeling_prumerge import (
    CompactedModelOutputFields,
    CompactionOutputFields,
    PruMergeForConditionalGenerationMixin,
    PruMergeModelMixin,
    VideoCompactionOutputFields,
)
from .qwen_vl import PROJECTED_TOKENS_FIELDS, QwenVLForConditionalGenerationMixin, QwenVLModelMixin
from .reduction_settings import ReductionSettings
from .runtime_compat import declare_cache_argument, share_checkpoint_layout, stock_output_classes

# Qwen/Qwen2.5-VL-*-Instruct checkpoints load unchanged: their weight names map as for stock Qwen2.5-VL.
share_checkpoint_layout(
    "qwen2_5_vl_prumerge",
    "qwen2_5_vl",
    {
        "Qwen2_5_VLPruMergeModel": "Qwen2_5_VLModel",
        "Qwen2_5_VLPruMergeForConditionalGeneration": "Qwen2_5_VLForConditionalGeneration",
    },
)
StockModelOutput, StockCausalLMOutput = stock_output_classes(stock, "Qwen2_5_VL")


@dataclass
class Qwen2_5_VLPruMergeModelOutputWithPast(
    VideoCompactionOutputFields, CompactedModelOutputFields, *PROJECTED_TOKENS_FIELDS, StockModelOutput
):
    """The stock output plus the compaction fields, per image and per video (`position_ids`: [3, B, L'])."""


@dataclass
class Qwen2_5_VLPruMergeCausalLMOutputWithPast(
    VideoCompactionOutputFields, CompactionOutputFields, *PROJECTED_TOKENS_FIELDS, StockCausalLMOutput
):
    """The stock output plus the compaction fields: `logits` has the compacted length."""


class Qwen2_5_VLPruMergeModel(QwenVLModelMixin, PruMergeModelMixin, stock.Qwen2_5_VLModel):
    """[`Qwen2_5_VLModel`] that feeds the language model the PruMerge-reduced merged tokens of every image and
    video frame group, each at the 3-D position of its place."""

    config_class = Qwen2_5_VLPruMergeConfig

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: see `QwenVLModelMixin.merged_features`."""
        return self.merged_features("image", pixel_values, image_grid_thw, reduction, kwargs)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_grid_thw: torch.LongTensor | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: see `QwenVLModelMixin.merged_features`."""
        return self.merged_features("video", pixel_values_videos, video_grid_thw, reduction, kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Qwen2_5_VLPruMergeModelOutputWithPast:
        """Overridden: with images or videos (raw, or features in `mm_encoder_outputs`), the language model runs
        on the compacted prompt at the positions stock gives each kept token; `labels` (optional) come back
        aligned with it. `rope_deltas` (4.x's argument) is not read: the model keeps its own."""
        visual_inputs = {
            "pixel_values": pixel_values, "pixel_values_videos": pixel_values_videos,
            "image_grid_thw": image_grid_thw, "video_grid_thw": video_grid_thw,
            "mm_token_type_ids": mm_token_type_ids, "second_per_grid_ts": second_per_grid_ts,
            "reduction": reduction,
        }  # fmt: skip
        return self.compacted_forward(
            Qwen2_5_VLPruMergeModelOutputWithPast, input_ids, attention_mask, position_ids, past_key_values,
            inputs_embeds, labels, mm_encoder_outputs, visual_inputs, kwargs,
        )  # fmt: skip


class Qwen2_5_VLPruMergeForConditionalGeneration(
    QwenVLForConditionalGenerationMixin,
    PruMergeForConditionalGenerationMixin,
    stock.Qwen2_5_VLForConditionalGeneration,
    GenerationMixin,
):
    """[`Qwen2_5_VLForConditionalGeneration`] whose LLM sees only the PruMerge-reduced image and video tokens."""

    config_class = Qwen2_5_VLPruMergeConfig
    # The reducer reads the full-attention block's submodules, so vision blocks must stay whole.
    _no_split_modules = ["Qwen2_5_VLVisionBlock", "Qwen2_5_VLDecoderLayer"]

    def __init__(self, config: Qwen2_5_VLPruMergeConfig):
        stock.Qwen2_5_VLPreTrainedModel.__init__(
            self, config
        )  # the stock __init__, with the PruMerge base model
        self.model = Qwen2_5_VLPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw=None, **kwargs):
        """The base model's (see `QwenVLModelMixin.merged_features`)."""
        return self.model.get_image_features(pixel_values, image_grid_thw, **kwargs)

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw=None, **kwargs):
        """The base model's (see `QwenVLModelMixin.merged_features`)."""
        return self.model.get_video_features(pixel_values_videos, video_grid_thw, **kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Qwen2_5_VLPruMergeCausalLMOutputWithPast:
        """Overridden: with visual inputs, the base model compacts the sequence (and `labels`); `logits` has the
        compacted length."""
        model_inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "past_key_values": past_key_values, "inputs_embeds": inputs_embeds, "pixel_values": pixel_values,
            "pixel_values_videos": pixel_values_videos, "image_grid_thw": image_grid_thw,
            "video_grid_thw": video_grid_thw, "mm_token_type_ids": mm_token_type_ids,
            "second_per_grid_ts": second_per_grid_ts, "mm_encoder_outputs": mm_encoder_outputs,
            "reduction": reduction,
        }  # fmt: skip
        return self.head_forward(
            Qwen2_5_VLPruMergeCausalLMOutputWithPast, labels, logits_to_keep, model_inputs, kwargs
        )


__all__ = ["Qwen2_5_VLPruMergeForConditionalGeneration", "Qwen2_5_VLPruMergeModel"]
