# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of Video-LLaVA models whose LLM sees only the PruMerge-reduced image and video tokens."""

from __future__ import annotations

from transformers import VideoLlavaConfig

from ..modeling.errors import ReductionSettingsError
from ..modeling.frames import frame_settings
from ..modeling.reduction_settings import ReductionSettings
from .configuration_prumerge import PruMergeConfigMixin, fixed_image_budget_problem


class VideoLlavaPruMergeConfig(PruMergeConfigMixin, VideoLlavaConfig):
    r"""A [`VideoLlavaConfig`] plus the PruMerge reducer fields (defaults: the published reducer, training-free,
    as the paper applied it to Video-LLaVA). Frames are reduced with the same settings as images; with
    `adaptive=False`, `num_video_tokens` fixes the tokens of a whole video (256 / 512 for 8 frames: the
    paper's 12.5% / 25%).

    Args:
        **kwargs: `VideoLlavaConfig`'s arguments and the fields of `ReductionSettings` (see
            `PruMergeConfigMixin`).
    """

    model_type = "video_llava_prumerge"
    stock_model_type = "video_llava"
    model_class_name = "VideoLlavaPruMergeForConditionalGeneration"

    def reduction_problem(self, settings: ReductionSettings) -> str | None:
        """Overridden: images and frames have a known number of patches (a frame's [CLS] token counts in its
        budget), and a video the frames `video_seq_length` implies (8 for the released models)."""
        vision = self.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        problem = super().reduction_problem(settings) or fixed_image_budget_problem(
            settings, patches, extra=1
        )
        if problem or settings.num_video_tokens is None:
            return problem
        frames = max(1, getattr(self, "video_seq_length", 0) // (patches + 1))
        try:
            per_frame = frame_settings(settings, frames)
        except ReductionSettingsError as error:
            return str(error)
        if settings.reduces and max(frame.num_visual_tokens or 0 for frame in per_frame) > patches:
            return (
                f"num_video_tokens={settings.num_video_tokens} is more than the {frames * (patches + 1)} tokens "
                f"of an unreduced {frames}-frame video; choose at most {frames * (patches + 1)}"
            )
        return None


__all__ = ["VideoLlavaPruMergeConfig"]
