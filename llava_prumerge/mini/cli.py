"""The `train-mini` subcommand (arguments only; torch is imported when it runs)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..common.cli_args import int_at_least, positive_int


def add_train_mini_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for model.safetensors, tokenizer.json, training.json"
    )
    # seed, processes, threads, tower: None keeps MiniRecipe's default, the shipped weights' recipe (one
    # source)
    parser.add_argument("--seed", type=int_at_least(0), help="default 0, as the shipped weights were trained")
    parser.add_argument(
        "--processes",
        type=positive_int,
        help="data-parallel training processes, at most one per CPU core (default 2: as the shipped weights "
        "were trained, 1.6-1.8x faster than 1 on a 2-core CPU; another number follows another trajectory)",
    )
    parser.add_argument("--threads", type=positive_int, help="CPU threads per process (default 1)")
    parser.add_argument(
        "--tower",
        choices=("clip", "siglip"),  # mini.model.TOWERS (not imported here: it imports torch)
        help="the vision tower's architecture (default clip, as the shipped weights; siglip has no [CLS] "
        "token, so PruMerge scores its patches with a stand-in importance)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few steps of each stage: checks the script runs, trains nothing",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into an existing --out folder")


def run_train_mini(args: argparse.Namespace) -> dict:
    """Train the mini LLaVA-PruMerge model from scratch on Shapes-VQA, as the shipped weights were made.

    Stage 1 trains a CLIP-architecture vision tower (random init; not OpenAI's CLIP) on a [CLS]
    objective: which (color, shape) pairs the image holds, in which half, and how many objects, so that
    the [CLS] attention PruMerge reads is learned. Stage 2 trains the projector and a 4-layer Llama
    (random init) with every visual token (token_reduction "none", as LLaVA-1.5 trained), the tower
    frozen: first on the color questions alone, which teach it to bind a shape to its color, then on
    Shapes-VQA conversations with every question type; throughout, a grounding loss points one attention
    head at the object each answer is about. With --tower siglip the tower is SigLIP's architecture (no
    [CLS] token; the image-level objective on its attention-pooling head), whose patches PruMerge scores
    with a stand-in importance (`ReductionSettings.importance` "auto"). Seeded; the measured time on the
    project's 2-core CPU is in the README. The folder it writes (model.safetensors in float16,
    tokenizer.json, training.json with the recipe, the time and the test accuracy) is what `load_mini`
    reads and what ships in llava_prumerge/mini/weights; `llava-prumerge export --mini` turns the shipped
    one into a Hub folder.

    llava-prumerge train-mini --out mini-weights
    llava-prumerge eval --model mini   # evaluates the shipped weights
    """
    from ..errors import OutputExistsError
    from .train import MiniRecipe, train_mini

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise OutputExistsError(
            f"{args.out} already exists and is not empty; choose another --out or pass --overwrite"
        )
    recipe = MiniRecipe.quick() if args.quick else MiniRecipe()
    given = {name: getattr(args, name) for name in ("seed", "processes", "threads", "tower")}
    recipe = dataclasses.replace(
        recipe, **{name: value for name, value in given.items() if value is not None}
    )
    return train_mini(args.out, recipe)
