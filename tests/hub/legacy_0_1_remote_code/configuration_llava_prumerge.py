"""Configuration of LLaVA models whose LLM sees only the PruMerge-reduced visual tokens."""

from __future__ import annotations

from transformers import LlavaConfig

from .token_reduction import REDUCTION_DEFAULTS, validate_reduction_fields


class LlavaPruMergeConfig(LlavaConfig):
    r"""A [`LlavaConfig`] plus the PruMerge reducer fields (defaults: the published reducer).

    Args:
        token_reduction (`str`, *optional*, defaults to `"prumerge"`):
            `"prumerge"`, `"prumerge_plus"`, `"none"` (stock LLaVA), or the paper's ablation baselines
            `"sequential"` (first n patches) and `"spatial"` (a uniform grid of n patches).
        adaptive (`bool`, *optional*, defaults to `True`):
            Keep the per-image IQR outliers of the [CLS] attention; `False` uses `reduction_ratio`
            or `num_visual_tokens`.
        reduction_ratio (`float`, *optional*, defaults to 1/8): kept fraction when not adaptive.
        num_visual_tokens (`int`, *optional*):
            With `adaptive=False`, the exact number of visual tokens per image (summary token
            included); the count for the baselines.
        iqr_scale (`float`, *optional*, defaults to 1.5): outliers lie above Q3 + iqr_scale * IQR.
        merge (`bool`, *optional*, defaults to `True`): token supplement; `False` is AITS only.
        merge_k (`int`, *optional*, defaults to 32): patches each kept token absorbs.
        merge_weighting (`str`, *optional*, defaults to `"reference"`):
            `"reference"` (x_c + sum a_j x_j, as published) or `"mean"` (attention-weighted mean).
        summary_token (`bool`, *optional*, defaults to `True`): append the attention-weighted sum of
            all patches not kept.
        class_attention (`str`, *optional*, defaults to `"reference"`):
            `"reference"` (one head over the full width, as published) or `"heads_mean"`.
        reduction_layer (`int`, *optional*, defaults to -1): the vision layer whose q/k projections
            give the [CLS] attention and the keys.
        token_order (`str`, *optional*, defaults to `"attention"`):
            `"attention"` (as published) or `"spatial"` (raster order of the kept patches).
    """

    model_type = "llava_prumerge"

    def __init__(
        self,
        token_reduction: str = REDUCTION_DEFAULTS["token_reduction"],
        adaptive: bool = REDUCTION_DEFAULTS["adaptive"],
        reduction_ratio: float = REDUCTION_DEFAULTS["reduction_ratio"],
        num_visual_tokens: int | None = REDUCTION_DEFAULTS["num_visual_tokens"],
        iqr_scale: float = REDUCTION_DEFAULTS["iqr_scale"],
        merge: bool = REDUCTION_DEFAULTS["merge"],
        merge_k: int = REDUCTION_DEFAULTS["merge_k"],
        merge_weighting: str = REDUCTION_DEFAULTS["merge_weighting"],
        summary_token: bool = REDUCTION_DEFAULTS["summary_token"],
        class_attention: str = REDUCTION_DEFAULTS["class_attention"],
        reduction_layer: int = REDUCTION_DEFAULTS["reduction_layer"],
        token_order: str = REDUCTION_DEFAULTS["token_order"],
        **kwargs,
    ):
        fields = {
            "token_reduction": token_reduction,
            "adaptive": adaptive,
            "reduction_ratio": reduction_ratio,
            "num_visual_tokens": num_visual_tokens,
            "iqr_scale": iqr_scale,
            "merge": merge,
            "merge_k": merge_k,
            "merge_weighting": merge_weighting,
            "summary_token": summary_token,
            "class_attention": class_attention,
            "reduction_layer": reduction_layer,
            "token_order": token_order,
        }
        validate_reduction_fields(**fields)
        for name, value in fields.items():
            setattr(self, name, value)
        super().__init__(**kwargs)
        layers = self.vision_config.num_hidden_layers
        if not -layers <= reduction_layer < layers:
            raise ValueError(
                f"reduction_layer={reduction_layer} is outside the vision tower's {layers} layers; "
                f"use an index in [{-layers}, {layers - 1}]"
            )

    @property
    def reducer_kwargs(self) -> dict:
        """The keyword arguments of `reduce_visual_tokens` that this config sets."""
        return {
            name: getattr(self, name)
            for name in REDUCTION_DEFAULTS
            if name not in ("class_attention", "reduction_layer")
        }

    @classmethod
    def from_llava_config(cls, llava_config: LlavaConfig, **reduction_fields) -> LlavaPruMergeConfig:
        """Turn a stock LLaVA config (e.g. llava-hf/llava-1.5-7b-hf's) into a PruMerge config."""
        validate_reduction_fields(**reduction_fields)
        values = llava_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        values.update(reduction_fields)
        config = cls(**values)
        config.architectures = ["LlavaPruMergeForConditionalGeneration"]
        return config


__all__ = ["LlavaPruMergeConfig"]
