# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Videos as frames for PruMerge: the frames' pixel values checked, per-frame budgets, the reducer per frame.

Every frame of a video is reduced like an image; a fixed budget counts every token that reaches the
LLM: `num_visual_tokens` per frame, or `num_video_tokens` per video, split evenly over its frames.
What a frame or a video adds beside its reduced patches (Video-LLaVA: each frame's [CLS] token;
LLaVA-OneVision: one `image_newline` after the video) is counted in the budget.
"""

from __future__ import annotations

import torch

from .errors import ReductionSettingsError, VisualInputError
from .reduction_settings import ReductionSettings
from .token_reduction import ReducedTokens, raise_if_not_finite
from .vision_encoding import EncodedPatches, described_shape


def check_video_values(pixel_values_videos, vision_config) -> None:
    """[videos, frames, channels, size, size] finite values, as the video processor makes them."""
    expected = (vision_config.num_channels, vision_config.image_size, vision_config.image_size)
    if (
        not isinstance(pixel_values_videos, torch.Tensor)
        or pixel_values_videos.dim() != 5
        or tuple(pixel_values_videos.shape[2:]) != expected
    ):
        raise VisualInputError(
            f"pixel_values_videos must be one tensor [num_videos, num_frames, {expected[0]}, {expected[1]}, "
            f"{expected[2]}] (the videos of a batch with the same number of frames), got "
            f"{described_shape(pixel_values_videos)}; preprocess videos with the model's video processor, and pass "
            "single images as pixel_values"
        )
    if pixel_values_videos.shape[0] == 0 or pixel_values_videos.shape[1] == 0:
        raise VisualInputError(
            f"pixel_values_videos holds no frames (shape {tuple(pixel_values_videos.shape)}); pass "
            "pixel_values_videos=None for prompts without videos"
        )
    raise_if_not_finite(
        pixel_values_videos,
        "pixel_values_videos contain NaN or inf; check the video decoding and preprocessing",
    )


def frame_settings(
    settings: ReductionSettings, num_frames: int, class_token: bool = True, video_newline: bool = False
) -> list[ReductionSettings]:
    """The reducer settings of each frame position of a video: those of images, with budgets counting the
    frame's [CLS] token (`class_token`: kept before its patches) and the video's closing newline
    (`video_newline`), and `num_video_tokens` split evenly over the frames (earlier frames get the
    remainder)."""
    fixed = not settings.adaptive or not settings.prunes  # the baselines always count
    if not settings.reduces or not fixed:
        return [settings] * num_frames
    if settings.num_video_tokens is not None:
        share, extra = divmod(settings.num_video_tokens - video_newline, num_frames)
        budgets, name = [share + 1] * extra + [share] * (num_frames - extra), "num_video_tokens"
    elif settings.num_visual_tokens is not None:
        budgets, name = [settings.num_visual_tokens] * num_frames, "num_visual_tokens"
    else:
        return [settings] * num_frames
    needs = (
        ["its [CLS] token"] * class_token
        + ["a kept patch"]
        + ["the summary token"] * (settings.summary_token and settings.prunes)
    )
    if min(budgets) < len(needs):
        newline = " after the video's newline" if video_newline and name == "num_video_tokens" else ""
        raise ReductionSettingsError(
            f"{name}={getattr(settings, name)} leaves {min(budgets)} token(s){newline} for a frame of a "
            f"{num_frames}-frame video, which needs at least {len(needs)} ({', '.join(needs)})"
        )
    return [
        settings.replace(num_visual_tokens=budget - class_token, num_video_tokens=None) for budget in budgets
    ]


def reduce_per_frame(encoded: EncodedPatches, per_position: list[ReductionSettings]) -> ReducedTokens:
    """The reducer on every frame of `encoded` ([videos * frames] items), each with its frame position's
    settings (`frame_settings`)."""
    if len(set(per_position)) == 1:
        return encoded.reduce(per_position[0])
    num_frames, num_items = len(per_position), encoded.features.shape[0]
    features, centers, neighbors = [None] * num_items, [None] * num_items, [None] * num_items
    for settings in dict.fromkeys(per_position):  # two: the budget split unevenly over the frames
        indices = [i for i in range(num_items) if per_position[i % num_frames] == settings]
        reduced = encoded.select(torch.tensor(indices, device=encoded.features.device)).reduce(settings)
        for index, tokens, kept, absorbed in zip(
            indices, reduced.features, reduced.centers, reduced.neighbors, strict=True
        ):
            features[index], centers[index], neighbors[index] = tokens, kept, absorbed
    return ReducedTokens(features, centers, neighbors)
