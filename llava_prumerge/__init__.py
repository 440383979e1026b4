"""LLaVA-PruMerge: adaptive visual-token reduction for LLaVA, as Hugging Face Transformers models."""

import transformers

from .configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from .modeling.modeling_llava_prumerge import LlavaPruMergeForConditionalGeneration, LlavaPruMergeModel
from .modeling.token_reduction import (
    REDUCTION_DEFAULTS,
    ReducedTokens,
    class_attention,
    reduce_visual_tokens,
)

__version__ = "0.1.0"

transformers.AutoConfig.register(LlavaPruMergeConfig.model_type, LlavaPruMergeConfig, exist_ok=True)
transformers.AutoModel.register(LlavaPruMergeConfig, LlavaPruMergeModel, exist_ok=True)
transformers.AutoModelForImageTextToText.register(
    LlavaPruMergeConfig, LlavaPruMergeForConditionalGeneration, exist_ok=True
)
if hasattr(transformers, "AutoModelForVision2Seq"):  # transformers 4.x only
    transformers.AutoModelForVision2Seq.register(
        LlavaPruMergeConfig, LlavaPruMergeForConditionalGeneration, exist_ok=True
    )

__all__ = [
    "REDUCTION_DEFAULTS",
    "LlavaPruMergeConfig",
    "LlavaPruMergeForConditionalGeneration",
    "LlavaPruMergeModel",
    "ReducedTokens",
    "class_attention",
    "reduce_visual_tokens",
]
