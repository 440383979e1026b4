# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of LLaVA-OneVision models whose LLM sees only the PruMerge-reduced visual tokens."""

from __future__ import annotations

from transformers import LlavaOnevisionConfig

from .configuration_prumerge import PruMergeConfigMixin


class LlavaOnevisionPruMergeConfig(PruMergeConfigMixin, LlavaOnevisionConfig):
    r"""A [`LlavaOnevisionConfig`] plus the PruMerge reducer fields (defaults: the published reducer,
    training-free). Its SigLIP tower has no [CLS] token, so patches are scored by the stand-in that
    `importance="auto"` picks (`mean_attention`, measured on a mini model trained here). Each view of an
    image is reduced; with `adaptive=False`, `num_visual_tokens` fixes the tokens of a whole image (its
    `image_newline` tokens included), shared by its views in proportion to their patches, and
    `num_video_tokens` those of a whole video (its newline included), shared evenly by its frames.

    Args:
        **kwargs: `LlavaOnevisionConfig`'s arguments and the fields of `ReductionSettings` (see
            `PruMergeConfigMixin`).
    """

    model_type = "llava_onevision_prumerge"
    stock_model_type = "llava_onevision"
    model_class_name = "LlavaOnevisionPruMergeForConditionalGeneration"


__all__ = ["LlavaOnevisionPruMergeConfig"]
