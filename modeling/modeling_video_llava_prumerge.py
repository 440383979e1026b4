# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Video-LLaVA whose language model sees only the PruMerge-reduced image and video tokens.

The paper applies PruMerge training-free to Video-LLaVA: every frame of a video is reduced like an
image, with its own [CLS] attention, as a batch through the video tower. Stock Video-LLaVA feeds the
LLM each frame's [CLS] token followed by its patch tokens (8 frames x 257 = 2056 tokens at 224 px);
PruMerge keeps that layout: each frame contributes its [CLS] token (kept as it is, first, as the
model was trained to see it), then its reduced patch tokens, whose summary token (last) is the
attention-weighted sum of that frame's pruned patches. Budgets count every token reaching the LLM:
`num_visual_tokens` per frame, or `num_video_tokens` per video (256 / 512 for 8 frames are the
paper's 12.5% / 25%), split evenly over the frames.

Modifications to the stock classes, beside what the shared parts do (`modeling_prumerge`):
- `VideoLlavaPruMergeModel.visual_tokens`: images through the image tower as for LLaVA-1.5, videos
  through the video tower frame by frame (the architecture-specific step).
- `get_image_features` / `get_video_features`: as stock, with the projected reduced tokens.
- `forward` (both classes): the stock signatures (`pixel_values` or the 4.x name
  `pixel_values_images`, and `pixel_values_videos`), delegating to the shared forward.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.video_llava.modeling_video_llava import (
    VideoLlavaCausalLMOutputWithPast,
    VideoLlavaForConditionalGeneration,
    VideoLlavaModel,
    VideoLlavaModelOutputWithPast,
    VideoLlavaPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_video_llava_prumerge import VideoLlavaPruMergeConfig
from .compaction import VisualTokens
from .errors import VisualInputError
from .frames import check_video_values, frame_settings, reduce_per_frame
from .modeling_prumerge import (
    CompactedModelOutputFields,
    CompactionOutputFields,
    PruMergeForConditionalGenerationMixin,
    PruMergeModelMixin,
    VideoCompactionOutputFields,
    visual_features_output,
)
from .reduction_settings import ReductionSettings
from .runtime_compat import IMAGE_FEATURES_AS_OUTPUT, declare_cache_argument, share_checkpoint_layout
from .token_reduction import ReducedTokens
from .vision_encoding import EncodedPatches, encode_patches, patches_from_hidden_states

# LanguageBind/Video-LLaVA-7B-hf checkpoints load unchanged: their weight names map as for stock Video-LLaVA.
share_checkpoint_layout("video_llava_prumerge", "video_llava", {"VideoLlavaPruMergeModel": "VideoLlavaModel"})


@dataclass
class VideoLlavaPruMergeModelOutputWithPast(
    VideoCompactionOutputFields, CompactedModelOutputFields, VideoLlavaModelOutputWithPast
):
    """[`VideoLlavaModelOutputWithPast`] plus the compaction fields, per image and per video."""


@dataclass
class VideoLlavaPruMergeCausalLMOutputWithPast(
    VideoCompactionOutputFields, CompactionOutputFields, VideoLlavaCausalLMOutputWithPast
):
    """[`VideoLlavaCausalLMOutputWithPast`] plus the compaction fields, per image and per video: `logits`
    has the compacted length."""


def _images(pixel_values, pixel_values_images):
    """The images, under transformers 5's name (`pixel_values`) or 4.x's (`pixel_values_images`)."""
    if pixel_values is not None and pixel_values_images is not None:
        raise VisualInputError(
            "Pass the images once: as pixel_values or as pixel_values_images (4.x), not both"
        )
    return pixel_values if pixel_values is not None else pixel_values_images


class VideoLlavaPruMergeModel(PruMergeModelMixin, VideoLlavaModel):
    """[`VideoLlavaModel`] that feeds the language model the PruMerge-reduced image and video tokens."""

    config_class = VideoLlavaPruMergeConfig
    modality_inputs = {"image": "pixel_values", "video": "pixel_values_videos"}
    image_tower_attribute = "image_tower"

    def encode_video_frames(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        reduction: ReductionSettings | None = None,
    ) -> EncodedPatches:
        """The video tower's part, frames as a batch [videos * frames]: features with each frame's [CLS] row
        (stock Video-LLaVA keeps it) and, for the reducer, each frame's [CLS] attention and keys."""
        check_video_values(pixel_values_videos, self.config.vision_config)
        feature_layer = (
            self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        )
        frames = pixel_values_videos.flatten(0, 1)  # [videos * frames, 3, H, W]
        return encode_patches(
            self.video_tower, frames, feature_layer, True, self.reduction_settings(reduction)
        )

    def reduce_video_frames(
        self, encoded: EncodedPatches, num_frames: int, reduction: ReductionSettings | None = None
    ) -> ReducedTokens:
        """The reducer on every frame, with its frame position's settings: per frame, its [CLS] token first."""
        return reduce_per_frame(encoded, frame_settings(self.reduction_settings(reduction), num_frames))

    def video_tokens(self, reduced: ReducedTokens, num_frames: int) -> VisualTokens:
        """Reduced frame tokens projected and gathered per video, ready for compaction."""
        projected = self.multi_modal_projector(torch.cat(reduced.features, dim=0))  # [sum n_f, hidden]
        frames = list(projected.split(reduced.num_tokens, dim=0))
        videos = range(0, len(frames), num_frames)
        centers = [
            torch.cat(
                [
                    torch.stack([torch.full_like(kept, frame), kept], dim=-1)  # [m_f, 2]: (frame, patch)
                    for frame, kept in enumerate(reduced.centers[start : start + num_frames])
                ]
            )
            for start in videos
        ]
        vision = self.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return VisualTokens(
            modality="video",
            token_id=self.config.video_token_id,
            features=[torch.cat(frames[start : start + num_frames]) for start in videos],
            expanded_lengths=[num_frames * (patches + 1)] * len(videos),
            centers=centers,
        )

    def visual_tokens(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_values_images: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> list[VisualTokens]:
        """Implemented: the images' and the videos' reduced, projected tokens."""
        tokens = []
        images = _images(pixel_values, pixel_values_images)
        if images is not None:
            tokens.append(
                self.tokens_of_images(images, vision_feature_layer, vision_feature_select_strategy, reduction)
            )
        if pixel_values_videos is not None:
            encoded = self.encode_video_frames(pixel_values_videos, vision_feature_layer, reduction)
            num_frames = pixel_values_videos.shape[1]
            tokens.append(
                self.video_tokens(self.reduce_video_frames(encoded, num_frames, reduction), num_frames)
            )
        return tokens

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_values_images: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock, with the projected reduced tokens, one [n_i, hidden] tensor per image, as
        `pooler_output` (transformers 4.x: that list alone)."""
        images = _images(pixel_values, pixel_values_images)
        return self.image_features(
            images, vision_feature_layer, vision_feature_select_strategy, reduction, kwargs
        )

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock (the whole video tower runs on the frames, its outputs are returned), with the
        projected reduced tokens, one [n_v, hidden] tensor per video, as `pooler_output`; transformers 4.x:
        (that list, the number of frames), as stock 4.x returns (features, frames)."""
        check_video_values(pixel_values_videos, self.config.vision_config)
        settings = self.reduction_settings(reduction)
        feature_layer = (
            self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        )
        num_frames = pixel_values_videos.shape[1]
        outputs, hidden_states = self.run_whole_tower(
            self.video_tower, pixel_values_videos.flatten(0, 1), kwargs
        )
        encoded = patches_from_hidden_states(self.video_tower, hidden_states, feature_layer, True, settings)
        videos = self.video_tokens(self.reduce_video_frames(encoded, num_frames, settings), num_frames)
        if not IMAGE_FEATURES_AS_OUTPUT:
            return videos.features, num_frames
        return visual_features_output(videos, **outputs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_images: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
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
    ) -> VideoLlavaPruMergeModelOutputWithPast:
        """Overridden: with images or videos (raw, or features in `mm_encoder_outputs`), the language model
        runs on the compacted prompt; `labels` (optional) come back aligned with it."""
        visual_inputs = {
            "pixel_values": pixel_values,
            "pixel_values_images": pixel_values_images,
            "pixel_values_videos": pixel_values_videos,
            "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "reduction": reduction,
        }
        return self.compacted_forward(
            VideoLlavaPruMergeModelOutputWithPast, input_ids, attention_mask, position_ids, past_key_values,
            inputs_embeds, labels, mm_encoder_outputs, visual_inputs, kwargs,
        )  # fmt: skip


class VideoLlavaPruMergeForConditionalGeneration(
    PruMergeForConditionalGenerationMixin, VideoLlavaForConditionalGeneration, GenerationMixin
):
    """[`VideoLlavaForConditionalGeneration`] whose LLM sees only the PruMerge-reduced image and video tokens."""

    config_class = VideoLlavaPruMergeConfig
    visual_input_names = ("pixel_values", "pixel_values_images", "pixel_values_videos")
    # The reducer calls into the reduction layer's submodules, so vision layers must stay whole.
    _no_split_modules = [
        "CLIPEncoderLayer", "CLIPVisionEmbeddings", "VideoLlavaMultiModalProjector", "LlamaDecoderLayer",
    ]  # fmt: skip

    def __init__(self, config: VideoLlavaPruMergeConfig):
        VideoLlavaPreTrainedModel.__init__(self, config)  # the stock __init__, with the PruMerge base model
        self.model = VideoLlavaPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor | None = None, **kwargs):
        """The base model's (see `VideoLlavaPruMergeModel.get_image_features`)."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_video_features(self, pixel_values_videos: torch.Tensor, **kwargs):
        """The base model's (see `VideoLlavaPruMergeModel.get_video_features`)."""
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_images: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
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
    ) -> VideoLlavaPruMergeCausalLMOutputWithPast:
        """Overridden: with visual inputs, the base model compacts the sequence (and `labels`); `logits` has
        the compacted length."""
        model_inputs = {
            "input_ids": input_ids, "pixel_values": pixel_values, "pixel_values_images": pixel_values_images,
            "pixel_values_videos": pixel_values_videos, "attention_mask": attention_mask,
            "position_ids": position_ids, "past_key_values": past_key_values, "inputs_embeds": inputs_embeds,
            "vision_feature_layer": vision_feature_layer, "vision_feature_select_strategy": vision_feature_select_strategy,
            "mm_encoder_outputs": mm_encoder_outputs, "reduction": reduction,
        }  # fmt: skip
        return self.head_forward(
            VideoLlavaPruMergeCausalLMOutputWithPast, labels, logits_to_keep, model_inputs, kwargs
        )


__all__ = ["VideoLlavaPruMergeForConditionalGeneration", "VideoLlavaPruMergeModel"]
