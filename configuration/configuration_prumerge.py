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
            setattr(self, name, value)

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


__all__ = ["PruMergeConfigMixin"]
