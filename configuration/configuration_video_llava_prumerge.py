# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of Video-LLaVA models whose LLM sees only the PruMerge-reduced image and video tokens."""

from __future__ import annotations

from transformers import VideoLlavaConfig

from .configuration_prumerge import PruMergeConfigMixin


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


__all__ = ["VideoLlavaPruMergeConfig"]
