"""The `app` and `space` subcommands (arguments only; gradio, torch and the model load when one runs)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..common.cli_args import int_at_least
from ..errors import UsageError

APP_MODEL_HELP = (
    "a PruMerge or stock LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL, Qwen2-VL or Video-LLaVA "
    "checkpoint, folder or Hub id; or 'mini' (the default: the mini model trained on Shapes-VQA, shipped in "
    "the package), 'mini-siglip' or 'tiny' (tiny random weights)"
)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="DIR_OR_REPO", help=APP_MODEL_HELP)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to serve on (default: this machine only; 0.0.0.0: every interface)",
    )
    parser.add_argument("--port", type=int_at_least(1), default=7860, help="default 7860")


def run_app(args: argparse.Namespace) -> None:
    """See PruMerge in a browser: a Gradio page on the model, served until Ctrl+C.

    Upload an image (a video for a Video-LLaVA model) or pick a shipped sample, ask a question and choose
    methods (none, prumerge, prumerge_plus, and fixed budgets of tokens): for each, side by side, the
    patches it kept drawn over the image as `visualize` draws them, the visual tokens that reached the
    language model, the vision / reducer / LLM prefill times (as `demo` measures them) and the answer.
    LLaVA-NeXT and LLaVA-OneVision images are drawn view by view (a fixed budget shared by the views),
    Qwen-VL ones merged token by merged token.
    By default the shipped mini model runs: nothing is downloaded. Needs the `app` extra
    (pip install 'llava-prumerge[app]').

    llava-prumerge app                                  # http://127.0.0.1:7860, the mini model
    llava-prumerge app --model llava-hf/llava-1.5-7b-hf --port 8080
    """
    require_gradio()
    from .page import serve

    serve(args.model, args.host, args.port)


def require_gradio() -> None:
    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the app needs Gradio, which is not installed: pip install 'llava-prumerge[app]'")


def add_space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="REPO_ID",
        help="the Hub id of the model the Space runs (an existing local folder is taken as it is, to try the "
        "Space on this machine)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the Space folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run_space(args: argparse.Namespace) -> Path:
    """Write a Hugging Face Space folder that runs `llava-prumerge app` on a Hub model.

    The folder holds app.py (the same app as `llava-prumerge app --model REPO_ID`), requirements.txt (this
    llava-prumerge release with its `app` extra, and the Gradio release it was tested with) and README.md
    with the Space's metadata (sdk: gradio, the model linked). Push it as a Space repo, e.g. with
    `hf upload --repo-type space NAME DIR`. The Space installs llava-prumerge from PyPI, at this version.

    llava-prumerge space --model org/llava-prumerge-7b --out llava-prumerge-space
    """
    from .space import write_space

    out = write_space(args.model, args.out, args.overwrite)
    print(f"Space folder: {out} (app.py, requirements.txt, README.md) running {args.model}")
    return out
