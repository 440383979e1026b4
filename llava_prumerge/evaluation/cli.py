"""The `eval` and `shapes-vqa` subcommands (arguments only; the work is imported when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.cli_args import int_at_least, positive_int, positive_int_list, subset_of
from ..modeling.reduction_settings import IMPORTANCE_SCORES

EVAL_METHODS = ("none", "prumerge", "prumerge_plus", "spatial", "sequential")
SPLIT_NAMES = ("train", "validation", "test")
MINI = "mini"  # --model value for the mini model shipped in the package
DEFAULT_BUDGETS = [16, 32, 64]
# The smallest Shapes-VQA image side: its smallest objects are round(0.12 * side) pixels wide (see
# shapes_vqa.SIZE_RANGE), none below 5 pixels.
MIN_IMAGE_SIZE = 5


def without_repeats(parse):
    """An argparse type: `parse`'s list with repeated values dropped (each would be evaluated again)."""

    def parse_once(text: str) -> list:
        return list(dict.fromkeys(parse(text)))

    return parse_once


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=MINI,
        metavar="DIR_OR_REPO",
        help="a PruMerge or stock LLaVA checkpoint (folder or Hub id); default: the shipped mini model "
        "('mini'; 'mini-siglip': the one whose tower has no [CLS] token)",
    )
    parser.add_argument("--task", choices=("shapes-vqa",), default="shapes-vqa")
    parser.add_argument(
        "--methods",
        type=without_repeats(subset_of(EVAL_METHODS, "method")),
        default=["none", "prumerge", "prumerge_plus"],
        help="comma-separated (default none,prumerge,prumerge_plus; also spatial, sequential)",
    )
    budgets = parser.add_mutually_exclusive_group()
    budgets.add_argument(
        "--budgets",
        type=without_repeats(positive_int_list),
        help="fixed visual-token budgets per image, summary token included (default 16,32,64)",
    )
    budgets.add_argument("--no-budgets", action="store_true", help="only the adaptive counts and none")
    parser.add_argument(
        "--importance",
        choices=IMPORTANCE_SCORES,
        help="where patch importance comes from (default: the model's; auto = the [CLS] row where there is one)",
    )
    parser.add_argument("--split", choices=SPLIT_NAMES, default="test")
    parser.add_argument("--limit", type=positive_int, help="only the first N questions")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number (and answers) here")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="accuracy against visual tokens")
    lmms = parser.add_argument_group(
        "real benchmarks through lmms-eval (installed in the interpreter given; see the README)"
    )
    lmms.add_argument(
        "--lmms-eval-tasks",
        type=lambda text: [task.strip() for task in text.split(",") if task.strip()],
        metavar="TASKS",
        help="e.g. pope,mme: run lmms-eval's tasks instead of Shapes-VQA and print them beside the paper's",
    )
    lmms.add_argument(
        "--lmms-eval-python",
        default=None,
        metavar="PYTHON",
        help="the interpreter that has lmms-eval (default: this one)",
    )
    lmms.add_argument("--lmms-eval-include-path", type=Path, metavar="DIR", help="extra task folder")
    lmms.add_argument("--lmms-eval-output", type=Path, metavar="DIR", help="lmms-eval's output folder")


def run_eval(args: argparse.Namespace) -> dict:
    """Measure what PruMerge costs in accuracy: every method and fixed budget on the same questions.

    Shapes-VQA (default): the first --limit questions of a split of the synthetic task (see
    `llava-prumerge shapes-vqa`), rendered at the model's input size, asked one at a time through the
    model's chat template, answered greedily; scored by exact match of the first word. For none,
    PruMerge and PruMerge+ (adaptive) and every --budgets value (PruMerge, PruMerge+ and the baselines
    at a fixed count): accuracy overall and per question type, mean visual tokens per image, prefill time
    per question. --plot draws accuracy against visual tokens; --json keeps everything.

    --lmms-eval-tasks pope,mme runs the standard benchmarks through lmms-eval with the `llava_prumerge`
    model it registers (each method in turn) and prints the scores beside the paper's LLaVA-1.5-7B rows;
    it needs lmms-eval installed (--lmms-eval-python) and the benchmarks' data.

    llava-prumerge eval --limit 200 --plot accuracy.png
    llava-prumerge eval --model DIR --lmms-eval-tasks pope --lmms-eval-python .venvs/lmms/bin/python
    """
    from .run import run_eval_command

    return run_eval_command(args)


def add_shapes_vqa_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument("--split", choices=SPLIT_NAMES, default="train")
    parser.add_argument("--images", type=positive_int, default=1000, help="how many images (default 1000)")
    parser.add_argument("--start", type=int_at_least(0), default=0, help="index of the first image")
    parser.add_argument(
        "--image-size",
        type=int_at_least(MIN_IMAGE_SIZE),
        default=None,
        help=f"at least {MIN_IMAGE_SIZE}; default 72, the mini model's",
    )
    parser.add_argument(
        "--format",
        choices=("llava", "lmms-eval"),
        default="llava",
        help="llava: conversation JSON for `llava-prumerge train` (all questions of an image as turns); "
        "lmms-eval: a local task folder (one question per line)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into an existing --out folder")


def run_shapes_vqa(args: argparse.Namespace) -> Path:
    """Write a split of Shapes-VQA to files: images and questions, from seeds (see the README's definition).

    --format llava writes OUT/images/*.png and OUT/data.json, LLaVA's conversation format (each image
    with all its questions as turns), which `llava-prumerge train --data OUT/data.json --image-folder
    OUT/images` reads. --format lmms-eval writes a local lmms-eval task (OUT/shapes_vqa_local.yaml,
    utils.py, OUT/images, OUT/test.jsonl: one question per line); run it with
    `python -m lmms_eval --include_path OUT --tasks shapes_vqa_local ...`.

    llava-prumerge shapes-vqa --split train --images 2000 --out shapes-train
    """
    from .files import write_split

    return write_split(args)
