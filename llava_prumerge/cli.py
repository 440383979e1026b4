"""`llava-prumerge` command line: one subcommand per task, each implemented in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module implementing `add_arguments(parser)` and `main_from_args(args)`, help)
SUBCOMMANDS = {
    "demo": ("llava_prumerge.demo", "see what PruMerge does, on an embedded default (no download)"),
    "convert": ("llava_prumerge.hub_upload.convert", "original LLaVA LoRA checkpoint -> PruMerge Hub folder"),
    "export": ("llava_prumerge.hub_upload.export", "stock llava-hf checkpoint or tiny weights -> Hub folder"),
    "upload": (
        "llava_prumerge.hub_upload.upload",
        "validate a Hub folder and push it to the Hugging Face Hub",
    ),
    "tiny-inputs": (
        "llava_prumerge.hub_upload.tiny_inputs",
        "tiny stand-ins for the inputs of convert/export",
    ),
    "visualize": (
        "llava_prumerge.visualize",
        "draw the patches PruMerge keeps and merges for one image, beside its [CLS] attention histogram",
    ),
    "bench": (
        "llava_prumerge.bench",
        "measure vision, reducer, prefill, TTFT, decode, KV cache and memory for none vs PruMerge(+)",
    ),
    "analyze": (
        "llava_prumerge.roofline",
        "roofline estimate of LLM prefill cost for none vs PruMerge vs PruMerge+",
    ),
    "train": (
        "llava_prumerge.train",
        "LoRA fine-tuning with PruMerge active (the paper's recipe), then export",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (some pull in the Trainer)."""
    parser = argparse.ArgumentParser(prog="llava-prumerge", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            sub.description = (module.__doc__ or help_text).strip()
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(sub)
            sub.set_defaults(handler=module.main_from_args)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
