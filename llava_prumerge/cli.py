"""`llava-prumerge` command line: one subcommand per task.

Each subcommand lives in its wing's `cli` module as `add_<name>_arguments(parser)` and
`run_<name>(args)`; those modules import torch and transformers only inside `run_<name>`, so
`--help` and `--version` answer at once. Library errors (`PruMergeError`, and OSError for files)
end the command with a one-line message and exit status 2; `--traceback` (or
LLAVA_PRUMERGE_TRACEBACK=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .common.notices import hide_torchvision_fallback_notice, hide_upstream_noise, warnings_as_lines
from .errors import PruMergeError

# subcommand -> (its wing's cli module, one-line help)
SUBCOMMANDS = {
    "demo": (
        "llava_prumerge.demo.cli",
        "see what PruMerge does, on the shipped mini model and Shapes-VQA images (no download)",
    ),
    "visualize": (
        "llava_prumerge.demo.cli",
        "draw the patches PruMerge keeps and merges for one image, beside its [CLS] attention histogram",
    ),
    "bench": (
        "llava_prumerge.benchmarks.cli",
        "measure vision, reducer, prefill, TTFT, decode, KV cache and memory for none vs PruMerge(+)",
    ),
    "analyze": (
        "llava_prumerge.benchmarks.cli",
        "roofline estimate of LLM prefill cost for none vs PruMerge vs PruMerge+",
    ),
    "train": (
        "llava_prumerge.training.cli",
        "LoRA fine-tuning with PruMerge active (the paper's recipe), then export",
    ),
    "eval": (
        "llava_prumerge.evaluation.cli",
        "accuracy against visual tokens for every method and budget (Shapes-VQA, or lmms-eval's benchmarks)",
    ),
    "shapes-vqa": (
        "llava_prumerge.evaluation.cli",
        "write a split of the synthetic Shapes-VQA task to files",
    ),
    "train-mini": (
        "llava_prumerge.mini.cli",
        "retrain the shipped mini model on Shapes-VQA from scratch (CPU)",
    ),
    "convert": ("llava_prumerge.hub_upload.cli", "original LLaVA LoRA checkpoint -> PruMerge Hub folder"),
    "export": (
        "llava_prumerge.hub_upload.cli",
        "stock llava-hf checkpoint, the shipped mini model or tiny weights -> Hub folder",
    ),
    "upload": ("llava_prumerge.hub_upload.cli", "validate a Hub folder and push it to the Hugging Face Hub"),
    "tiny-inputs": ("llava_prumerge.testing.cli", "tiny stand-ins for the inputs of convert/export"),
    "serve": (
        "llava_prumerge.serving.cli",
        "serve a fixed-budget PruMerge checkpoint with vLLM's OpenAI-compatible server",
    ),
    "app": (
        "llava_prumerge.app.cli",
        "see PruMerge in a browser: upload an image, ask, compare the methods side by side (Gradio)",
    ),
    "space": ("llava_prumerge.app.cli", "write a Hugging Face Space folder that runs the app on a Hub model"),
}
TRACEBACK_VARIABLE = "LLAVA_PRUMERGE_TRACEBACK"


def _command_functions(name: str):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    stem = name.replace("-", "_")
    return getattr(module, f"add_{stem}_arguments"), getattr(module, f"run_{stem}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's arguments are built (its module imports no torch)."""
    parser = argparse.ArgumentParser(prog="llava-prumerge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"llava-prumerge {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an error")
    parser.add_argument(
        "--verbose", action="store_true", help="show upstream progress bars and FutureWarnings too"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            add_arguments, run = _command_functions(name)
            sub.description = (run.__doc__ or help_text).strip()
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            add_arguments(sub)
            sub.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    hide_torchvision_fallback_notice()
    if not args.verbose:
        hide_upstream_noise()
        warnings_as_lines(args.command)
    if args.traceback or os.environ.get(TRACEBACK_VARIABLE):
        args.handler(args)
        return
    try:
        args.handler(args)
    except (PruMergeError, OSError) as error:
        message = str(error) if isinstance(error, PruMergeError) else f"{type(error).__name__}: {error}"
        print(f"llava-prumerge {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"llava-prumerge {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
