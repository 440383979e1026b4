"""Load a checkpoint as a PruMerge model, whether it is a PruMerge Hub folder or a stock LLaVA-family one.

A stock checkpoint (e.g. llava-hf/llava-1.5-7b-hf) becomes the matching PruMerge model, training-free,
with every weight loaded; a PruMerge folder loads with this package's classes (its remote code is
not needed). Reducer fields passed here override the checkpoint's.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import torch
from huggingface_hub import constants, try_to_load_from_cache
from transformers import AutoConfig, AutoProcessor

from ..architectures import ARCHITECTURES, architecture_for
from ..errors import MissingInputError, UsageError
from .file_checks import checkpoint_folder_problem, damaged_file_problem

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_checkpoint_source(name_or_path: str, needs_config: bool = True) -> None:
    """A missing or damaged folder, or a Hub id neither cached nor reachable, is one clear error up front,
    rather than a minute of download retries or a loader's traceback."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():  # a processor alone (a training checkpoint's) needs no config.json beside it
        problem = checkpoint_folder_problem(path) if needs_config else damaged_file_problem(path)
        if problem:
            raise UsageError(problem if needs_config else f"{problem}; save or download it again")
        return
    if path.exists():
        raise MissingInputError(f"{name_or_path} is a file; pass a checkpoint folder or a Hub model id")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MissingInputError(f"No checkpoint folder at {name_or_path}")
    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return  # downloaded before
    if constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise MissingInputError(
            f"{name_or_path} is not a local folder and the Hugging Face Hub is unreachable (offline?); "
            "pass a local checkpoint folder, e.g. one written by `llava-prumerge export`"
        )


def _hub_reachable(timeout_seconds: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a connection (assumed so behind a proxy, which this cannot test)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection(
            (endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout_seconds
        ):
            return True
    except OSError:
        return False


def prumerge_config(name_or_path: str, **reduction_fields):
    """The checkpoint's config as a PruMerge config (a stock one converted), with `reduction_fields` applied."""
    check_checkpoint_source(name_or_path)
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


def load_processor(name_or_path: str):
    """The checkpoint's processor; one that needs a library this Python lacks (LLaVA-OneVision's video
    processor: torchvision) is one clear error naming it, not a traceback."""
    check_checkpoint_source(name_or_path, needs_config=False)
    try:
        return AutoProcessor.from_pretrained(name_or_path)
    except ImportError as error:
        reason = " ".join(str(error).split()).split(". ")[0]  # its first sentence
        raise UsageError(
            f"The processor of {name_or_path} cannot be built here: {reason}. Install torchvision built for "
            f"torch {torch.__version__} (see https://pytorch.org/get-started/locally/)"
        ) from error
