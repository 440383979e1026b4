# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""What every PruMerge config adds to its stock LLaVA-family config: the reducer fields.

The fields are plain attributes (so they serialize to config.json as before) whose values are those
of a `ReductionSettings`, which validates them and holds their defaults; `reduction_settings`
gives them back as one object.
"""

from __future__ import annotations

import warnings

from ..modeling.errors import ReductionSettingsError
from ..modeling.reduction_settings import REDUCTION_FIELDS, ReductionSettings


class PruMergeConfigMixin:
    """Listed before the stock config class: `class XPruMergeConfig(PruMergeConfigMixin, XConfig)`.

    Args:
        **kwargs: the stock config's arguments plus any `ReductionSettings` field (token_reduction,
            adaptive, reduction_ratio, num_visual_tokens, iqr_scale, merge, merge_k, merge_weighting,
            summary_token, class_attention, reduction_layer, token_order); see `ReductionSettings`
            for their meaning and defaults (the published reducer).
    """

    stock_model_type: str  # the model_type of the stock config this one extends
    model_class_name: str  # the architecture its checkpoints name (config.architectures)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # transformers 5 turns every config class into a dataclass with a generated __init__; keep ours.
        cls.__init__ = PruMergeConfigMixin.__init__

    def __init__(self, **kwargs):
        settings = ReductionSettings.from_fields(kwargs)
        for name in settings.to_dict():
            kwargs.pop(name, None)
        super().__init__(**kwargs)
        for name, value in settings.to_dict().items():
            setattr(self, name, value)  # the last one checks them against the towers (`__setattr__`)

    def __setattr__(self, name, value):
        """Overridden: a reducer field is validated whenever it is set, as `from_pretrained(..., field=value)`
        sets its overrides after `__init__`."""
        if name in REDUCTION_FIELDS:
            with warnings.catch_warnings():  # the field alone: its value is checked, not its combination
                warnings.simplefilter("ignore", UserWarning)
                ReductionSettings.from_fields({name: value})
            vision_config = getattr(self, "vision_config", None)
            layers = getattr(vision_config, "num_hidden_layers", None)
            if name == "reduction_layer" and layers is not None and not -layers <= value < layers:
                raise ReductionSettingsError(
                    f"reduction_layer={value} is outside the vision tower's {layers} layers; "
                    f"use an index in [{-layers}, {layers - 1}]"
                )
        super().__setattr__(name, value)
        if name in REDUCTION_FIELDS and all(field in vars(self) for field in REDUCTION_FIELDS):
            with warnings.catch_warnings():  # the combination is warned about where settings are built
                warnings.simplefilter("ignore", UserWarning)
                problem = self.reduction_problem(self.reduction_settings)
            if problem:
                raise ReductionSettingsError(problem)
            videos = self.num_video_tokens
            if videos is not None and getattr(self, "video_token_id", None) is None:
                warnings.warn(
                    f"num_video_tokens={videos} takes no effect: {self.model_type} models take no videos",
                    UserWarning,
                    stacklevel=2,
                )

    def reduction_problem(self, settings: ReductionSettings) -> str | None:
        """What `settings` could never do on this model, known from its config (None when nothing): checked
        whenever a reducer field is set, so a folder or a `from_pretrained` override that cannot run fails at
        load, not at the first forward. Architectures add their budgets' bounds."""
        vision = getattr(self, "vision_config", None)
        if settings.reduces and settings.importance == "cls" and not tower_has_class_token(vision):
            return (
                f"importance='cls' reads the [CLS] token's attention, and this vision tower "
                f"({getattr(vision, 'model_type', None)}) has none; use importance='auto' (or a stand-in: "
                "mean_attention, mean_query)"
            )
        return None

    @property
    def reduction_settings(self) -> ReductionSettings:
        """The reducer fields as one validated object."""
        return ReductionSettings.from_fields(vars(self))

    @classmethod
    def from_stock_config(cls, stock_config, **reduction_fields):
        """Turn a stock config (e.g. llava-hf/llava-1.5-7b-hf's) into a PruMerge config of the same model."""
        ReductionSettings().replace(**reduction_fields)  # unknown or invalid fields fail here, by name
        values = stock_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        config = cls(**{**values, **reduction_fields})
        config.architectures = [cls.model_class_name]
        return config

    @classmethod
    def from_llava_config(cls, llava_config, **reduction_fields):
        """`from_stock_config` under its 0.1 name."""
        return cls.from_stock_config(llava_config, **reduction_fields)


def tower_has_class_token(vision_config) -> bool:
    """Whether the tower's sequence starts with a [CLS] token: CLIP's does; SigLIP's and Qwen-VL's ViTs do not."""
    return getattr(vision_config, "model_type", None) == "clip_vision_model"


def fixed_image_budget_problem(settings: ReductionSettings, patches: int, extra: int = 0) -> str | None:
    """Why a fixed `num_visual_tokens` cannot be met for an image (or a frame) of `patches` patches plus
    `extra` tokens always kept (a frame's [CLS]): too few for a kept patch (and the summary token), or more
    than the patches (every one would be kept, the budget unmet). None when it fits, or when counts adapt."""
    budget = settings.num_visual_tokens
    if budget is None or not settings.reduces or (settings.prunes and settings.adaptive):
        return None
    fewest = extra + 1 + (settings.summary_token and settings.prunes)
    if budget < fewest:
        return (
            f"num_visual_tokens={budget} leaves no room for a kept patch"
            + (" beside the summary token" if settings.summary_token and settings.prunes else "")
            + f"; choose at least {fewest}"
        )
    if budget > patches + extra:
        return (
            f"num_visual_tokens={budget} is more than the {patches + extra} tokens of an unreduced image: every "
            f"patch would be kept and the budget not met; choose at most {patches + extra}, or "
            "token_reduction='none'"
        )
    return None


__all__ = ["PruMergeConfigMixin"]
