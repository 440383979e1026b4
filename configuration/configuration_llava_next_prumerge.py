# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of LLaVA-NeXT (AnyRes) models whose LLM sees only the PruMerge-reduced visual tokens."""

from __future__ import annotations

from transformers import LlavaNextConfig

from .configuration_prumerge import PruMergeConfigMixin


class LlavaNextPruMergeConfig(PruMergeConfigMixin, LlavaNextConfig):
    r"""A [`LlavaNextConfig`] plus the PruMerge reducer fields (defaults: the published reducer, training-free).
    Each view of an image (the base view and every high-resolution crop) is reduced with its own [CLS]
    attention; with `adaptive=False`, `num_visual_tokens` fixes the tokens of a whole image (its
    `image_newline` tokens included), shared by its views in proportion to their patches.

    Args:
        **kwargs: `LlavaNextConfig`'s arguments and the fields of `ReductionSettings` (see
            `PruMergeConfigMixin`).
    """

    model_type = "llava_next_prumerge"
    stock_model_type = "llava_next"
    model_class_name = "LlavaNextPruMergeForConditionalGeneration"


__all__ = ["LlavaNextPruMergeConfig"]
