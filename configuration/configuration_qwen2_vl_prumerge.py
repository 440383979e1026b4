# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of Qwen2-VL models whose LLM sees only the PruMerge-reduced visual tokens."""

from __future__ import annotations

from transformers import Qwen2VLConfig

from .configuration_prumerge import PruMergeConfigMixin


class Qwen2VLPruMergeConfig(PruMergeConfigMixin, Qwen2VLConfig):
    r"""A [`Qwen2VLConfig`] plus the PruMerge reducer fields (defaults: the published reducer, training-free).
    Its tower has no [CLS] token: merged tokens are scored by the stand-in `importance="auto"` picks, on the
    last full-attention block (`reduction_layer` is not read). Each image is reduced, and each frame group
    of a video; with `adaptive=False`, `num_visual_tokens` fixes the tokens of an image and
    `num_video_tokens` those of a video, shared evenly by its frame groups.

    Args:
        **kwargs: `Qwen2VLConfig`'s arguments and the fields of `ReductionSettings` (see
            `PruMergeConfigMixin`).
    """

    model_type = "qwen2_vl_prumerge"
    stock_model_type = "qwen2_vl"
    model_class_name = "Qwen2VLPruMergeForConditionalGeneration"


__all__ = ["Qwen2VLPruMergeConfig"]
