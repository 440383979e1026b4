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


VLLM_MISSING = (
    "vLLM is not installed in this environment; install it with `pip install 'llava-prumerge[vllm]'` "
    "(without a GPU: scripts/setup_vllm_env.sh builds an environment with vLLM's CPU build)"
)


def check_vllm_installed(option: str = "") -> None:
    """One line naming the fix where vLLM is missing (`option`: the flag that asked for it)."""
    if importlib.util.find_spec("vllm") is None:
        raise UsageError(f"{option}: {VLLM_MISSING}" if option else VLLM_MISSING)


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
    loads the folder with PruMerge's reducer in vLLM's model of its family (LLaVA-1.5, LLaVA-NeXT,
    LLaVA-OneVision, Qwen2.5-VL, Qwen2-VL). The checkpoint must have a fixed visual-token budget
    (`export --no-adaptive --num-visual-tokens N`, and `--num-video-tokens M` where it reads videos): vLLM
    reserves each item's tokens before the vision tower runs. The folder is checked first; then this process becomes vLLM's server
    (`python -m vllm.entrypoints.openai.api_server --model MODEL ...`), which listens on port 8000 unless
    --port says otherwise.
    """
    budgets = checked_budget(args.model, args.server_args)
    check_vllm_installed()
    per_item = ", ".join(
        f"{count if count is not None else 'stock'} tokens per {modality}"
        for modality, count in budgets.items()
    )
    print(f"llava-prumerge serve: {args.model}, {per_item}; starting vLLM", file=sys.stderr)
    sys.stderr.flush()
    command = [sys.executable, "-m", VLLM_SERVER_MODULE, "--model", args.model, *args.server_args]
    os.execv(sys.executable, command)


def hf_overrides(server_args: list[str]) -> dict:
    """vLLM's `--hf-overrides JSON` among the server arguments ({} without it): the config vLLM will serve."""
    return json_argument(server_args, "--hf-overrides")


def json_argument(server_args: list[str], name: str) -> dict:
    """The JSON object of one of vLLM's server arguments ({} without it)."""
    for index, argument in enumerate(server_args):
        given, equals, value = argument.partition("=")
        if given == name:
            text = value if equals else next(iter(server_args[index + 1 :]), "")
            try:
                parsed = json.loads(text)
            except ValueError as error:
                raise UsageError(f"{name} must be a JSON object, got {text!r} ({error})") from None
            if not isinstance(parsed, dict):
                raise UsageError(f"{name} must be a JSON object, got {text!r}")
            return parsed
    return {}


def checked_budget(model: str, server_args: list[str]) -> dict[str, int]:
    """The visual tokens per item of a servable PruMerge checkpoint (per image, and per video where it reads
    videos and `--limit-mm-per-prompt` allows them), with vLLM's `--hf-overrides` of its config; a clear
    error for anything else."""
    from transformers import AutoConfig

    from ..architectures import architecture_for
    from .budget import served_budgets
    from .vllm_plugin import ARCHITECTURES as SERVED_ARCHITECTURES

    if not Path(model).is_dir() and (Path(model).is_absolute() or model.startswith(".")):
        raise MissingInputError(
            f"{model} is not a folder; export one with `llava-prumerge export` or `convert`"
        )
    config = AutoConfig.from_pretrained(model)
    config.update(hf_overrides(server_args))
    architecture = (getattr(config, "architectures", None) or [None])[0]
    arch = architecture_for(config.model_type)
    if architecture is None and arch is not None and arch.model_type == config.model_type:
        architecture = arch.head_class  # transformers 4.57's Qwen-VL configs drop `architectures` on load
    if architecture not in SERVED_ARCHITECTURES:
        raise UsageError(
            f"{model} holds a {config.model_type} model ({architecture}); `serve` runs PruMerge checkpoints "
            f"({', '.join(SERVED_ARCHITECTURES)}) written by `llava-prumerge export` or `convert`; the vLLM "
            "plugin has no other architecture (Video-LLaVA)"
        )
    videos = json_argument(server_args, "--limit-mm-per-prompt").get("video", 1) != 0
    try:
        return served_budgets(config, videos)
    except UnservableBudgetError as error:
        raise UnservableBudgetError(f"{model}: {error}") from None
