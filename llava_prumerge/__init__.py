"""LLaVA-PruMerge: adaptive visual-token reduction for LLaVA, as Hugging Face Transformers models."""

from .modeling.token_reduction import (
    REDUCTION_DEFAULTS,
    ReducedTokens,
    class_attention,
    reduce_visual_tokens,
)

__version__ = "0.1.0"

__all__ = ["REDUCTION_DEFAULTS", "ReducedTokens", "class_attention", "reduce_visual_tokens"]
