"""Load a checkpoint as a PruMerge model, whether it is a PruMerge Hub folder or a stock LLaVA-family one.

A stock checkpoint (e.g. llava-hf/llava-1.5-7b-hf) becomes the matching PruMerge model, training-free,
with every weight loaded; a PruMerge folder loads with this package's classes (its remote code is
not needed). Reducer fields passed here override the checkpoint's.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig

from ..architectures import ARCHITECTURES, architecture_for
from ..errors import UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def prumerge_config(name_or_path: str, **reduction_fields):
    """The checkpoint's config as a PruMerge config (a stock one converted), with `reduction_fields` applied."""
    config = AutoConfig.from_pretrained(name_or_path)
    arch = architecture_for(config.model_type)
    if arch is None:
        known = ", ".join(f"{a.stock_model_type!r} or {a.model_type!r}" for a in ARCHITECTURES)
        raise UsageError(
            f"{name_or_path} is a {config.model_type!r} checkpoint; expected one of the model types {known}"
        )
    return arch.load("config_class").from_stock_config(config, **reduction_fields)


def load_prumerge_model(name_or_path: str, dtype: torch.dtype | str = "auto", **reduction_fields):
    """The checkpoint as its PruMerge model class (eval mode), with `reduction_fields` applied."""
    config = prumerge_config(name_or_path, **reduction_fields)
    head = architecture_for(config.model_type).load("head_class")
    return head.from_pretrained(name_or_path, config=config, dtype=dtype).eval()
