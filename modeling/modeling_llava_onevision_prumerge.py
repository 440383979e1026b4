# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""LLaVA-OneVision whose language model sees only the PruMerge-reduced image and video tokens.

LLaVA-OneVision's SigLIP tower has no [CLS] token: every row is a patch, and patches are scored by the
stand-in that `importance="auto"` picks (`mean_attention`: the mean attention each patch receives in
the reduction layer, measured on a mini model trained here). Its visual inputs, and how PruMerge
reduces and lays them out:
- An image alone in its prompt: the base view and up to 9 AnyRes crops (`anyres_max_9`), each view
  reduced, laid out in stock's order (`anyres`: the base view, then the crops' kept tokens in the raster
  order of the unpadded map, one `image_newline` per row of crops). Stock shrinks an unpadded map of more
  than about 9 crops' patches bilinearly; the reduced crops keep their own (merged) patches instead, far
  fewer than the shrink's cap.
- An image in a multi-image prompt (`batch_num_images` > 1): its base view alone, reduced, then one
  `image_newline`, as stock feeds base view and newline.
- A video: each frame's patches projected and pooled 2 x 2 as stock does (27 x 27 -> 14 x 14 at 384 px),
  then each frame reduced over its pooled tokens, with the importance and keys pooled alike (the same
  bilinear weights): the merge averages tokens in the LLM's space, where stock's pooled tokens live.
  The frames' tokens follow each other, then one `image_newline`, as in stock.
Budgets: adaptive per view and frame, or `num_visual_tokens` per image (newlines included) and
`num_video_tokens` per video (its newline included, the rest split evenly over its frames).

Modifications to the stock classes, beside the shared parts (`modeling_prumerge`, `anyres`, `frames`):
- `LlavaOnevisionPruMergeModel.visual_tokens`: views -> partial SigLIP -> per-view reducer -> layout;
  frames -> partial SigLIP -> projector -> pooling -> per-frame reducer.
- `get_image_features` / `get_video_features`: as stock, with the reduced tokens per item as `pooler_output`.
- `forward` (both classes): the stock signatures, delegating to the shared forward.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionCausalLMOutputWithPast,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionModelOutputWithPast,
    LlavaOnevisionPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_llava_onevision_prumerge import LlavaOnevisionPruMergeConfig
from .anyres import AnyresLayout, AnyresModelMixin, ReducedViews, check_anyres_inputs, used_views
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

# llava-hf LLaVA-OneVision checkpoints load unchanged: their weight names map as for stock LLaVA-OneVision.
share_checkpoint_layout(
    "llava_onevision_prumerge", "llava_onevision", {"LlavaOnevisionPruMergeModel": "LlavaOnevisionModel"}
)


@dataclass
class LlavaOnevisionPruMergeModelOutputWithPast(
    VideoCompactionOutputFields, CompactedModelOutputFields, LlavaOnevisionModelOutputWithPast
):
    """[`LlavaOnevisionModelOutputWithPast`] plus the compaction fields, per image ((view, patch) centers) and
    per video ((frame, pooled patch) centers)."""


@dataclass
class LlavaOnevisionPruMergeCausalLMOutputWithPast(
    VideoCompactionOutputFields, CompactionOutputFields, LlavaOnevisionCausalLMOutputWithPast
):
    """[`LlavaOnevisionCausalLMOutputWithPast`] plus the compaction fields: `logits` has the compacted length."""


def max_crops(vision_aspect_ratio: str) -> int:
    """The crop count of an `anyres_max_<n>` aspect-ratio setting."""
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix) or not vision_aspect_ratio[len(prefix) :].isdigit():
        raise VisualInputError(
            f"vision_aspect_ratio must be 'anyres_max_<n>' (LLaVA-OneVision's is 'anyres_max_9'), got "
            f"{vision_aspect_ratio!r}"
        )
    return int(vision_aspect_ratio[len(prefix) :])


def shrunk_map(layout: AnyresLayout, vision_aspect_ratio: str) -> tuple[int, int]:
    """(rows, columns) of an image's unpadded crop map as stock feeds it: shrunk bilinearly when it holds more
    than about `n` crops' patches (`anyres_max_<n>`: by more than 1.1x in side)."""
    rows, cols = layout.bottom - layout.top, layout.right - layout.left
    ratio = math.sqrt(rows * cols / (max_crops(vision_aspect_ratio) * layout.side**2))
    if ratio > 1.1:
        return int(rows // ratio), int(cols // ratio)
    return rows, cols


def anyres_crops(batch_num_images, num_images: int) -> list[bool]:
    """Per image, whether stock splits it into AnyRes crops: only an image alone in its prompt."""
    if batch_num_images is None:  # stock's default: every image alone
        return [True] * num_images
    counts = [int(count) for count in torch.as_tensor(batch_num_images).flatten()]
    if sum(counts) != num_images or min(counts, default=0) < 0:
        raise VisualInputError(
            f"batch_num_images {counts} counts {sum(counts)} image(s) but pixel_values holds {num_images}: pass "
            "the batch_num_images the processor returned with these pixel_values"
        )
    return [count == 1 for count in counts for _ in range(count)]


class OnevisionVideoMixin:
    """The video stages of LLaVA-OneVision PruMerge models (transformers' and vLLM's): stock's pooled frame
    features, each frame reduced over them, the frames gathered per video and closed by its newline; a model
    with `apply_pooling`, `multi_modal_projector` and `image_newline`."""

    def pool_frames(self, encoded: EncodedPatches) -> EncodedPatches:
        """Stock's video features: each frame's patches projected, then pooled 2 x 2 (`apply_pooling`); each
        patch's importance and key pooled with the same weights, for the reducer."""
        features = self.apply_pooling(self.multi_modal_projector(encoded.features))  # [F, pooled, hidden]
        if encoded.attention is None:
            return EncodedPatches(features)
        attention = self.apply_pooling(encoded.attention[..., None])[..., 0]  # [F, pooled]
        keys = self.apply_pooling(encoded.keys.contiguous())  # [F, pooled, Dk]
        return EncodedPatches(features, None, attention, keys)

    def reduce_video_frames(
        self, pooled: EncodedPatches, num_frames: int, settings: ReductionSettings
    ) -> ReducedTokens:
        """The reducer on every pooled frame ([videos * num_frames]), with its frame position's settings
        (`frames.frame_settings`: `num_video_tokens` counts the video's newline)."""
        per_position = frame_settings(settings, num_frames, class_token=False, video_newline=True)
        return reduce_per_frame(pooled, per_position)

    def video_features(self, reduced: ReducedTokens, num_frames: int) -> list[torch.Tensor]:
        """Per video, its frames' reduced tokens then its newline [n, hidden]."""
        newline = self.image_newline[None].to(reduced.features[0])
        starts = range(0, len(reduced.features), num_frames)
        return [torch.cat([*reduced.features[start : start + num_frames], newline]) for start in starts]


class LlavaOnevisionPruMergeModel(
    OnevisionVideoMixin, AnyresModelMixin, PruMergeModelMixin, LlavaOnevisionModel
):
    """[`LlavaOnevisionModel`] that feeds the language model the PruMerge-reduced tokens of every AnyRes view,
    multi-image base view and video frame."""

    config_class = LlavaOnevisionPruMergeConfig
    model_name = "LLaVA-OneVision"
    modality_inputs = {"image": "pixel_values", "video": "pixel_values_videos"}

    def check_reading(self, vision_feature_select_strategy: str | None, vision_aspect_ratio: str | None):
        """OneVision reads every SigLIP row ("full"), and a call's `vision_aspect_ratio` must be the config's,
        which the processor counted placeholders with."""
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if strategy != "full":
            raise VisualInputError(
                f"LLaVA-OneVision reads every row of its SigLIP tower (no [CLS] token): "
                f"vision_feature_select_strategy must be 'full', got {strategy!r}"
            )
        if vision_aspect_ratio not in (None, self.config.vision_aspect_ratio):
            raise VisualInputError(
                f"vision_aspect_ratio={vision_aspect_ratio!r} differs from the config's "
                f"{self.config.vision_aspect_ratio!r}; set config.vision_aspect_ratio (and the processor's) instead"
            )
        max_crops(self.config.vision_aspect_ratio)

    def stock_image_length(self, layout: AnyresLayout) -> int:
        """Implemented: the base view's patches, then the (shrunk) unpadded crop map with a newline per row, or
        one newline after a lone base view."""
        if layout.base_newline:
            return layout.side * layout.side + 1
        rows, cols = shrunk_map(layout, self.config.vision_aspect_ratio)
        return layout.side * layout.side + rows * (cols + 1)

    def image_layouts(self, pixel_values, image_sizes, batch_num_images=None) -> list[AnyresLayout]:
        """Overridden: AnyRes crops for an image alone in its prompt, else its base view alone."""
        num_images = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) else 0
        crops = anyres_crops(batch_num_images, num_images)
        return check_anyres_inputs(pixel_values, image_sizes, self.config, self.model_name, crops)

    def anyres_tokens(self, reduced: ReducedViews, image_sizes) -> VisualTokens:
        """Reduced views projected and laid out per image, ready for compaction: stock's packing (with its
        shrink) without reduction, else `lay_out`."""
        layouts = reduced.layouts
        expanded = [self.stock_image_length(layout) for layout in layouts]
        if reduced.views is None:
            projected = self.multi_modal_projector(torch.stack(reduced.unreduced.features))
            features, _ = self.pack_image_features(
                list(projected.split([layout.num_views for layout in layouts])), image_sizes,
                image_newline=self.image_newline, vision_aspect_ratio=self.config.vision_aspect_ratio,
            )  # fmt: skip
            return VisualTokens(
                "image", self.config.image_token_id, list(features), expanded, [None] * len(features)
            )
        features, centers = self.lay_out_images(reduced)
        return VisualTokens("image", self.config.image_token_id, features, expanded, centers)

    def encode_video_frames(
        self,
        pixel_values_videos,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        reduction=None,
    ) -> tuple[EncodedPatches, ReductionSettings]:
        """The tower's part, frames as a batch [videos * frames]: patch features and, for the reducer, each
        patch's importance and key."""
        check_video_values(pixel_values_videos, self.config.vision_config)
        feature_layer, keep_rows, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        frames = pixel_values_videos.flatten(0, 1)  # [videos * frames, 3, H, W]
        return encode_patches(self.vision_tower, frames, feature_layer, keep_rows, settings), settings

    def video_tokens(self, reduced: ReducedTokens, num_frames: int) -> VisualTokens:
        """Reduced frame tokens (already in the LLM's space) gathered per video and closed by a newline."""
        features = self.video_features(reduced, num_frames)
        starts = range(0, len(reduced.features), num_frames)
        centers = [
            torch.cat(
                [
                    torch.stack(
                        [torch.full_like(kept, frame), kept], dim=-1
                    )  # [m_f, 2]: (frame, pooled patch)
                    for frame, kept in enumerate(reduced.centers[start : start + num_frames])
                ]
            )
            for start in starts
        ]
        side = math.ceil(self.config.vision_config.image_size / self.config.vision_config.patch_size / 2)
        expanded = [num_frames * side * side + 1] * len(features)
        return VisualTokens("video", self.config.video_token_id, features, expanded, centers)

    def visual_tokens(
        self,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_sizes_videos: torch.Tensor | None = None,
        batch_num_images: torch.Tensor | None = None,
        vision_aspect_ratio: str | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> list[VisualTokens]:
        """Implemented: the images' and the videos' reduced, projected tokens, laid out as stock orders them."""
        self.check_reading(vision_feature_select_strategy, vision_aspect_ratio)
        tokens = []
        if pixel_values is not None:
            layouts = self.image_layouts(pixel_values, image_sizes, batch_num_images)
            encoded, settings = self.encode_views(
                pixel_values, layouts, vision_feature_layer, vision_feature_select_strategy, reduction
            )
            tokens.append(self.anyres_tokens(self.reduce_images(encoded, layouts, settings), image_sizes))
        if pixel_values_videos is not None:
            encoded, settings = self.encode_video_frames(
                pixel_values_videos, vision_feature_layer, vision_feature_select_strategy, reduction
            )
            num_frames = pixel_values_videos.shape[1]
            reduced = self.reduce_video_frames(self.pool_frames(encoded), num_frames, settings)
            tokens.append(self.video_tokens(reduced, num_frames))
        return tokens

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.Tensor | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock (the whole tower runs on every view, its outputs are returned), with the reduced,
        laid-out tokens, one [n_i, hidden] tensor per image, as `pooler_output`; 4.x: that list alone."""
        self.check_reading(vision_feature_select_strategy, vision_aspect_ratio)
        layouts = self.image_layouts(pixel_values, image_sizes, batch_num_images)
        feature_layer, keep_rows, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        outputs, hidden_states = self.run_whole_tower(
            self.vision_tower, used_views(pixel_values, layouts), kwargs
        )
        encoded = patches_from_hidden_states(
            self.vision_tower, hidden_states, feature_layer, keep_rows, settings
        )
        tokens = self.anyres_tokens(self.reduce_images(encoded, layouts, settings), image_sizes)
        return visual_features_output(tokens, **outputs)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock (the whole tower runs on the frames, its outputs are returned), with the reduced
        tokens, one [n_v, hidden] tensor per video (its newline last), as `pooler_output`; 4.x: that list alone."""
        self.check_reading(vision_feature_select_strategy, None)
        check_video_values(pixel_values_videos, self.config.vision_config)
        feature_layer, keep_rows, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        num_frames = pixel_values_videos.shape[1]
        outputs, hidden_states = self.run_whole_tower(
            self.vision_tower, pixel_values_videos.flatten(0, 1), kwargs
        )
        encoded = patches_from_hidden_states(
            self.vision_tower, hidden_states, feature_layer, keep_rows, settings
        )
        videos = self.video_tokens(
            self.reduce_video_frames(self.pool_frames(encoded), num_frames, settings), num_frames
        )
        if not IMAGE_FEATURES_AS_OUTPUT:
            return videos.features
        return visual_features_output(videos, **outputs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_sizes_videos: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaOnevisionPruMergeModelOutputWithPast:
        """Overridden: with images or videos (raw, or features in `mm_encoder_outputs`), the language model
        runs on the compacted prompt; `labels` (optional) come back aligned with it."""
        visual_inputs = {
            "pixel_values": pixel_values,
            "image_sizes": image_sizes,
            "pixel_values_videos": pixel_values_videos,
            "image_sizes_videos": image_sizes_videos,
            "batch_num_images": batch_num_images,
            "vision_aspect_ratio": vision_aspect_ratio,
            "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "reduction": reduction,
        }
        return self.compacted_forward(
            LlavaOnevisionPruMergeModelOutputWithPast, input_ids, attention_mask, position_ids, past_key_values,
            inputs_embeds, labels, mm_encoder_outputs, visual_inputs, kwargs,
        )  # fmt: skip


class LlavaOnevisionPruMergeForConditionalGeneration(
    PruMergeForConditionalGenerationMixin, LlavaOnevisionForConditionalGeneration, GenerationMixin
):
    """[`LlavaOnevisionForConditionalGeneration`] whose LLM sees only the PruMerge-reduced image and video
    tokens."""

    config_class = LlavaOnevisionPruMergeConfig
    visual_input_names = ("pixel_values", "pixel_values_videos")
    visual_option_names = ("image_sizes", "image_sizes_videos", "batch_num_images", "vision_aspect_ratio")
    # The reducer calls into the reduction layer's submodules, so vision layers must stay whole.
    _no_split_modules = [
        "SiglipEncoderLayer",
        "SiglipVisionEmbeddings",
        "LlavaOnevisionMultiModalProjector",
        "Qwen2DecoderLayer",
        "LlamaDecoderLayer",
    ]

    def __init__(self, config: LlavaOnevisionPruMergeConfig):
        LlavaOnevisionPreTrainedModel.__init__(
            self, config
        )  # the stock __init__, with the PruMerge base model
        self.model = LlavaOnevisionPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ):
        """The base model's (see `LlavaOnevisionPruMergeModel.get_image_features`)."""
        return self.model.get_image_features(pixel_values, image_sizes, **kwargs)

    def get_video_features(self, pixel_values_videos: torch.Tensor, **kwargs):
        """The base model's (see `LlavaOnevisionPruMergeModel.get_video_features`)."""
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_sizes_videos: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaOnevisionPruMergeCausalLMOutputWithPast:
        """Overridden: with visual inputs, the base model compacts the sequence (and `labels`); `logits` has
        the compacted length."""
        model_inputs = {
            "input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes,
            "pixel_values_videos": pixel_values_videos, "image_sizes_videos": image_sizes_videos,
            "attention_mask": attention_mask, "position_ids": position_ids, "past_key_values": past_key_values,
            "inputs_embeds": inputs_embeds, "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "vision_aspect_ratio": vision_aspect_ratio, "batch_num_images": batch_num_images,
            "mm_encoder_outputs": mm_encoder_outputs, "reduction": reduction,
        }  # fmt: skip
        return self.head_forward(
            LlavaOnevisionPruMergeCausalLMOutputWithPast, labels, logits_to_keep, model_inputs, kwargs
        )


__all__ = ["LlavaOnevisionPruMergeForConditionalGeneration", "LlavaOnevisionPruMergeModel"]
