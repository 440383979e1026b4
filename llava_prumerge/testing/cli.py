"""The `tiny-inputs` subcommand (arguments only; the work is imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_tiny_inputs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write vicuna/, clip/, lora/ and llava-hf/ into")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run_tiny_inputs(args: argparse.Namespace):
    """Write tiny random-weight stand-ins for what `convert` and `export --from-hf` read (for tests and docs).

    OUT/vicuna    a Llama causal LM and its tokenizer (no <image>, no pad token), as lmsys/vicuna-7b-v1.5
    OUT/clip      a full CLIPModel checkpoint with openai's preprocessor_config.json
    OUT/lora      an original LLaVA LoRA training output (config.json, adapter, projector)
    OUT/llava-hf  a stock LlavaForConditionalGeneration and its processor, as llava-hf/llava-1.5-7b-hf
    """
    from ..common.output_folders import written_whole
    from .tiny_inputs import tiny_input_paths, write_tiny_inputs

    with written_whole(args.out, args.overwrite) as staging:  # an interrupted run leaves no half folder
        write_tiny_inputs(staging, final_root=args.out)
    inputs = tiny_input_paths(args.out)
    print(
        f"Wrote tiny stand-ins: --base {inputs.vicuna} --vision-tower {inputs.clip} --lora {inputs.lora}; "
        f"--from-hf {inputs.llava_hf}"
    )
    return inputs
