# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of LLaVA-1.5 models whose LLM sees only the PruMerge-reduced visual tokens."""

from __future__ import annotations

from transformers import LlavaConfig

from ..modeling.reduction_settings import ReductionSettings
from .configuration_prumerge import PruMergeConfigMixin, fixed_image_budget_problem


class LlavaPruMergeConfig(PruMergeConfigMixin, LlavaConfig):
    r"""A [`LlavaConfig`] plus the PruMerge reducer fields (defaults: the published reducer).

    Args:
        **kwargs: `LlavaConfig`'s arguments and the fields of `ReductionSettings` (see
            `PruMergeConfigMixin`).
    """

    model_type = "llava_prumerge"
    stock_model_type = "llava"
    model_class_name = "LlavaPruMergeForConditionalGeneration"

    def reduction_problem(self, settings: ReductionSettings) -> str | None:
        """Overridden: an image is one view of a known number of patches, so a fixed budget's bounds are known."""
        vision = self.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return super().reduction_problem(settings) or fixed_image_budget_problem(settings, patches)


__all__ = ["LlavaPruMergeConfig"]
