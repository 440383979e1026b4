"""The `serve` subcommand (arguments only; the checks import transformers when it runs, vLLM runs the server)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from ..errors import MissingInputError, UnservableBudgetError, UsageError

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="a PruMerge Hub folder (or Hub id) whose config has a fixed budget"
    )
    parser.add_argument(
        "server_args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="vLLM's server and engine arguments, passed on as given (e.g. --port 8000 --max-model-len 4096 "
        "--tensor-parallel-size 2); `llava-prumerge serve MODEL --help` lists them",
    )


def run_serve(args: argparse.Namespace) -> None:
    """Serve a PruMerge checkpoint with vLLM's OpenAI-compatible server (chat completions with images).

    Needs vLLM in the environment (`pip install 'llava-prumerge[vllm]'`); the package's vLLM plugin
    loads the folder with PruMerge's reducer in vLLM's LLaVA. The checkpoint must have a fixed visual-
    token budget (`export --no-adaptive --num-visual-tokens N`): vLLM reserves each image's tokens before
    the vision tower runs. The folder is checked first; then this process becomes vLLM's server
    (`python -m vllm.entrypoints.openai.api_server --model MODEL ...`), which listens on port 8000 unless
    --port says otherwise.
    """
    budget = checked_budget(args.model, hf_overrides(args.server_args))
    if importlib.util.find_spec("vllm") is None:
        raise UsageError(
            "vLLM is not installed in this environment; install it with `pip install 'llava-prumerge[vllm]'` "
            "(without a GPU: scripts/setup_vllm_env.sh builds an environment with vLLM's CPU build)"
        )
    print(f"llava-prumerge serve: {args.model}, {budget} tokens per image; starting vLLM", file=sys.stderr)
    sys.stderr.flush()
    command = [sys.executable, "-m", VLLM_SERVER_MODULE, "--model", args.model, *args.server_args]
    os.execv(sys.executable, command)


def hf_overrides(server_args: list[str]) -> dict:
    """vLLM's `--hf-overrides JSON` among the server arguments ({} without it): the config vLLM will serve."""
    for index, argument in enumerate(server_args):
        name, equals, value = argument.partition("=")
        if name == "--hf-overrides":
            text = value if equals else next(iter(server_args[index + 1 :]), "")
            try:
                overrides = json.loads(text)
            except ValueError as error:
                raise UsageError(f"--hf-overrides must be a JSON object, got {text!r} ({error})") from None
            if not isinstance(overrides, dict):
                raise UsageError(f"--hf-overrides must be a JSON object, got {text!r}")
            return overrides
    return {}


def checked_budget(model: str, overrides: dict) -> int:
    """The visual tokens per image of a servable PruMerge checkpoint (with vLLM's `overrides` of its config);
    a clear error for anything else."""
    from transformers import AutoConfig

    from .budget import image_token_count
    from .vllm_plugin import ARCHITECTURES as SERVED_ARCHITECTURES

    if not Path(model).is_dir() and (Path(model).is_absolute() or model.startswith(".")):
        raise MissingInputError(
            f"{model} is not a folder; export one with `llava-prumerge export` or `convert`"
        )
    config = AutoConfig.from_pretrained(model)
    config.update(overrides)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    if architecture not in SERVED_ARCHITECTURES:
        raise UsageError(
            f"{model} holds a {config.model_type} model ({architecture}); `serve` runs LLaVA PruMerge checkpoints "
            f"({', '.join(SERVED_ARCHITECTURES)}) written by `llava-prumerge export` or `convert`; the vLLM "
            "plugin has no other architecture (Video-LLaVA)"
        )
    try:
        return image_token_count(config)
    except UnservableBudgetError as error:
        raise UnservableBudgetError(f"{model}: {error}") from None
