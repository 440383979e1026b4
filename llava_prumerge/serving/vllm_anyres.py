"""LLaVA-NeXT and LLaVA-OneVision PruMerge as vLLM models: vLLM's models whose AnyRes views (and, for
OneVision, video frames) go through the package's reducer, at fixed budgets.

Imported only by vLLM (the plugin registers them by name). Modifications to vLLM's
`LlavaNextForConditionalGeneration` and `LlavaOnevisionForConditionalGeneration`:
- `__init__`: refuses a config whose token count varies per image or video (see `budget`), and builds
  the tower's layers up to the reduction layer (`vllm_vision.VisionPatches`).
- `_process_image_input`: each image's views (base view, then its crops) -> the tower -> the reducer per
  view with the image's budget shared by its views (`anyres.view_budgets`) -> projector -> stock's order
  with one `image_newline` per row of crops (`AnyresModelMixin.lay_out`): the transformers model's stages.
- OneVision's `_process_video_pixels`: each frame projected and pooled 2 x 2 as stock does, reduced over
  its pooled tokens with the video's budget split over its frames, then the video's newline.
- Their processing infos size each image's (and video's) placeholder run to its budget, so the
  scheduler reserves (and the KV cache holds) only the reduced tokens.
vLLM lays out every image of a prompt as AnyRes; transformers' LLaVA-OneVision sees the images of a
multi-image prompt as base views alone, so only one-image prompts match it token for token.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.model_executor.models.utils import maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..modeling.anyres import AnyresLayout, AnyresModelMixin, anyres_layout
from ..modeling.modeling_llava_onevision_prumerge import OnevisionVideoMixin
from .budget import served_budgets, video_token_count
from .vllm_counts import ImageBudgetInfoMixin, videos_served
from .vllm_vision import VisionPatches


class LlavaNextPruMergeProcessingInfo(ImageBudgetInfoMixin, LlavaNextProcessingInfo):
    """vLLM's LLaVA-NeXT processing info counting every image at the config's budget, whatever its crops."""


class AnyresVllmMixin(AnyresModelMixin):
    """Listed before a vLLM AnyRes LLaVA: its images reduced per view by the transformers model's stages, on
    vLLM's tower (`VisionPatches`)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        """The vLLM model's, after refusing a config whose counts vary (before any weight is allocated), and the
        tower read as PruMerge reads it."""
        served_budgets(vllm_config.model_config.hf_config, videos_served(vllm_config))
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.settings = self.config.reduction_settings
        if getattr(self, "vision_tower", None) is not None:  # none when images are disabled (limit 0)
            self.patches = VisionPatches(
                self.vision_tower, self.config, self.settings, vllm_config.quant_config,
                maybe_prefix(prefix, "vision_tower"),
            )  # fmt: skip

    def image_layouts_of(self, image_sizes) -> list[AnyresLayout]:
        """Per image (height, width), its layout as stock computes it."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        return [
            anyres_layout(size, self.config.image_grid_pinpoints, vision.image_size, side)
            for size in torch.as_tensor(image_sizes).tolist()
        ]

    def _process_image_input(self, image_input):
        """Overridden for pixel inputs to reduce: one [budget, hidden] tensor per image."""
        if image_input["type"] != "pixel_values" or not self.settings.reduces:
            return super()._process_image_input(image_input)
        return self.reduced_images(image_input["pixel_values"], image_input["image_sizes"])

    def reduced_images(self, pixel_values, image_sizes) -> list[torch.Tensor]:
        """Per image its [budget, hidden] tokens: views encoded as one batch (each image's padding views
        dropped), reduced per view, projected and laid out in stock's order."""
        layouts = self.image_layouts_of(image_sizes)
        views = torch.cat(
            [pixels[: layout.num_views] for pixels, layout in zip(pixel_values, layouts, strict=True)]
        )  # [total views, 3, size, size]
        encoded = self.patches.encode(views)
        features, _ = self.lay_out_images(self.reduce_images(encoded, layouts, self.settings))
        return features


@MULTIMODAL_REGISTRY.register_processor(
    LlavaNextMultiModalProcessor, info=LlavaNextPruMergeProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class LlavaNextPruMergeForConditionalGeneration(AnyresVllmMixin, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT whose language model sees only the PruMerge-reduced tokens of every view."""

    model_name = "LLaVA-NeXT"


class LlavaOnevisionPruMergeProcessingInfo(ImageBudgetInfoMixin, LlavaOnevisionProcessingInfo):
    """vLLM's LLaVA-OneVision processing info counting every image and every video at the config's budgets."""

    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int) -> int:
        """Overridden: the video budget (stock's count without reduction)."""
        config = self.get_hf_config()
        settings = config.reduction_settings
        if not settings.reduces or settings.num_video_tokens is None:  # stock's, or videos are not served
            return super().get_num_video_tokens(
                image_width=image_width, image_height=image_height, num_frames=num_frames
            )
        return video_token_count(config)

    def _get_max_video_frames(self, max_tokens: int) -> int:
        """Overridden: the frames stock's count fits in `max_tokens` (a budget does not grow with the frames, so
        stock's search would not end), at most as many as the budget has tokens for (one and a summary each)."""
        settings = self.get_hf_config().reduction_settings
        if not settings.reduces or settings.num_video_tokens is None:  # stock's, or videos are not served
            return super()._get_max_video_frames(max_tokens)
        size = self.get_image_size_with_most_features()
        per_frame = self._get_num_frame_tokens(image_width=size.width, image_height=size.height)
        budget_frames = (settings.num_video_tokens - 1) // (1 + settings.summary_token)
        return max(0, min((max_tokens - 1) // per_frame, budget_frames))


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionMultiModalProcessor,
    info=LlavaOnevisionPruMergeProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class LlavaOnevisionPruMergeForConditionalGeneration(
    OnevisionVideoMixin, AnyresVllmMixin, LlavaOnevisionForConditionalGeneration
):
    """vLLM's LLaVA-OneVision whose language model sees only the PruMerge-reduced tokens of every view and
    video frame."""

    model_name = "LLaVA-OneVision"

    def _process_video_pixels(self, inputs):
        """Overridden to reduce: per video its frames' reduced tokens and its newline, [num_video_tokens, hidden]."""
        if not self.settings.reduces:
            return super()._process_video_pixels(inputs)
        videos = list(inputs["pixel_values_videos"])  # per video [frames, 3, size, size]
        pooled = self.pool_frames(self.patches.encode(torch.cat(videos)))  # [all frames, pooled, hidden]
        features, first = [], 0
        for video in videos:
            frames = torch.arange(first, first + len(video))
            reduced = self.reduce_video_frames(pooled.select(frames), len(video), self.settings)
            features += self.video_features(reduced, len(video))
            first += len(video)
        return features
