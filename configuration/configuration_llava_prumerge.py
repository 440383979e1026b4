# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of LLaVA-1.5 models whose LLM sees only the PruMerge-reduced visual tokens."""

from __future__ import annotations

from transformers import LlavaConfig

from .configuration_prumerge import PruMergeConfigMixin


class LlavaPruMergeConfig(PruMergeConfigMixin, LlavaConfig):
    r"""A [`LlavaConfig`] plus the PruMerge reducer fields (defaults: the published reducer).

    Args:
        **kwargs: `LlavaConfig`'s arguments and the fields of `ReductionSettings` (see
            `PruMergeConfigMixin`).
    """

    model_type = "llava_prumerge"
    stock_model_type = "llava"
    model_class_name = "LlavaPruMergeForConditionalGeneration"


__all__ = ["LlavaPruMergeConfig"]
