"""The `train` subcommand (arguments only; the Trainer is imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.cli_args import (
    add_reduction_arguments,
    float_in,
    non_negative_int,
    positive_float,
    positive_int,
    reduction_fields_from_args,
)
from ..errors import UsageError


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's layout
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--model", help="PruMerge or stock LLaVA checkpoint: folder or Hub id")
    io.add_argument("--data", help="LLaVA conversation data: a .json list or JSON Lines")
    io.add_argument("--image-folder", help="folder the samples' 'image' paths are relative to")
    io.add_argument("--output-dir", help="checkpoints, final adapter, data_report.json, merged export")
    io.add_argument("--export", help="Hub folder for the merged model (default OUTPUT_DIR/merged)")
    io.add_argument("--no-export", action="store_true", help="keep the adapter only; export later")
    io.add_argument(
        "--export-from",
        metavar="CHECKPOINT",
        help="only export: merge this checkpoint (OUTPUT_DIR or OUTPUT_DIR/checkpoint-N) into --export",
    )
    io.add_argument(
        "--skip-bad-samples", action="store_true", help="train on the valid samples (bad ones are listed)"
    )

    recipe = parser.add_argument_group("recipe (defaults: the paper's)")
    recipe.add_argument("--lora-r", type=positive_int, default=128)
    recipe.add_argument("--lora-alpha", type=positive_int, default=256)
    recipe.add_argument("--lora-dropout", type=float_in(0, 1, high_open=True), default=0.05)
    recipe.add_argument("--learning-rate", type=positive_float, default=2e-4, help="LoRA learning rate")
    recipe.add_argument("--projector-lr", type=float_in(0), default=2e-5, help="projector learning rate")
    recipe.add_argument(
        "--lr-scheduler",
        default="cosine",
        metavar="NAME",
        help="a transformers SchedulerType: cosine (default), linear, constant, ...",
    )
    recipe.add_argument("--warmup-ratio", type=float_in(0, 1), default=0.03)
    recipe.add_argument("--num-epochs", type=positive_float, default=1.0)
    recipe.add_argument(
        "--max-steps", type=positive_int, help="stop after this many steps (overrides epochs)"
    )
    recipe.add_argument("--per-device-batch-size", type=positive_int, default=16)
    recipe.add_argument("--gradient-accumulation-steps", type=positive_int, default=1)
    recipe.add_argument(
        "--max-length", type=positive_int, default=2048, help="tokens the LLM sees, images counted unreduced"
    )
    precision = recipe.add_mutually_exclusive_group()
    for name in ("bf16", "fp16", "fp32"):
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name)
    recipe.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)

    run = parser.add_argument_group("run")
    run.add_argument("--save-steps", type=positive_int, default=500)
    run.add_argument("--save-total-limit", type=positive_int, help="keep only the newest N checkpoints")
    run.add_argument("--logging-steps", type=positive_int, default=10)
    run.add_argument("--seed", type=non_negative_int, default=42)
    run.add_argument("--resume-from-checkpoint", metavar="PATH|latest")
    run.add_argument("--num-workers", type=non_negative_int, default=4, help="data loader worker processes")
    run.add_argument("--report-to", default="none", help="Trainer loggers, comma-separated (e.g. wandb)")
    run.add_argument("--deepspeed", metavar="CONFIG", help="DeepSpeed JSON config (torchrun launches)")
    add_reduction_arguments(parser, "the checkpoint's settings (a stock LLaVA: the published PruMerge)")


def run_train(args: argparse.Namespace) -> dict:
    """Fine-tune LLaVA with PruMerge active (the paper's LoRA recipe), then export the merged model.

    Recipe (defaults): LoRA r 128, alpha 256, dropout 0.05 on the language model's linear layers; the
    projector fully trained at --projector-lr 2e-5; the vision tower frozen; lr 2e-4, cosine schedule,
    3% warmup, one epoch, bf16 where the GPU supports it, gradient checkpointing, samples grouped by
    length, --max-length 2048. The paper's effective batch of 128 is --per-device-batch-size 16 on 8 GPUs
    (per-device x --gradient-accumulation-steps x GPUs). Only the assistant answers are in the loss.

    Runs on the Hugging Face Trainer: `accelerate launch` or `torchrun` (with --deepspeed CONFIG) scale
    it out. OUTPUT_DIR/checkpoint-N holds the LoRA adapter, the projector, the optimizer state and the
    processor (resume with --resume-from-checkpoint latest); at the end the adapter is merged into the
    base weights and written as a Hub folder to --export (default OUTPUT_DIR/merged). Export any
    checkpoint later with: llava-prumerge train --export-from OUTPUT_DIR/checkpoint-N --export OUT

    Data: LLaVA conversation JSON (a list) or JSON Lines, image paths relative to --image-folder. The
    whole file is checked before the model loads. Bad samples (missing or unreadable image, <image>
    count not matching the images, broken turns, bad JSON line, no answer within --max-length) stop the
    run, listed with their ids in OUTPUT_DIR/data_report.json; --skip-bad-samples trains on the rest
    (the skipped ones still counted and listed). Samples over --max-length (images counted at their
    unreduced size) lose the text past the limit, with a warning; an image is never cut.

    Precision: --bf16 (default on GPUs that support it), --fp16 (CUDA only: refused on a CPU), or
    --fp32 (default without a bf16 GPU). Without CUDA, --bf16 runs on the CPU under autocast.
    """
    from .train import export_checkpoint, train

    if args.no_export and args.export is not None:
        raise UsageError(f"--no-export and --export {args.export} contradict each other; pass one of them")
    if args.export_from:
        if args.export is None:
            raise UsageError("--export-from needs --export OUT, the Hub folder to write")
        if training_only := training_options_given(args):
            raise UsageError(
                f"--export-from only exports (with --model and the reducer flags); {', '.join(training_only)} "
                "apply to training: drop them"
            )
        export = export_checkpoint(
            Path(args.export_from), Path(args.export), args.model, **reduction_fields_from_args(args)
        )
        return {"export": str(export)}
    return train(args)


def training_options_given(args: argparse.Namespace) -> list[str]:
    """The options set away from their defaults that only training reads (--export-from would ignore them)."""
    reducer = argparse.ArgumentParser()
    add_reduction_arguments(reducer, "")
    export_reads = {"export_from", "export", "model", *vars(reducer.parse_args([]))}
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    given = []
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if action.dest in export_reads or value == action.default:
            continue
        if action.const is None or value == action.const:  # --bf16/--fp16/--fp32 share one dest
            given.append(action.option_strings[-1 if value is False else 0])
    return given
