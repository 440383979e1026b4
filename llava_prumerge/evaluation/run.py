"""The `llava-prumerge eval` run: load the model, evaluate, print the table, write JSON and the plot."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from ..common.loading import check_checkpoint_source, load_processor, load_prumerge_model
from ..common.outputs import check_output_path
from ..common.timing import torch_threads
from ..errors import PruMergeError, UsageError
from ..mini import SHIPPED_MINI_MODELS
from .cli import DEFAULT_BUDGETS
from .evaluate import BUDGETED, evaluate_shapes_vqa
from .report import accuracy_plot, results_table


def load_for_eval(name_or_path: str):
    """(model, processor, description) of --model: the shipped mini model, or a checkpoint (float32 on a
    CPU, float16 on a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name_or_path in SHIPPED_MINI_MODELS:
        from ..mini.model import load_shipped_mini

        model, processor = load_shipped_mini(name_or_path)
        description = f"the mini model shipped in llava-prumerge ({name_or_path}; Shapes-VQA only)"
        return model.to(device), processor, description
    dtype = torch.float16 if device == "cuda" else torch.float32
    processor = load_processor(name_or_path)  # first: a library it lacks is named before the weights load
    model = load_prumerge_model(name_or_path, dtype=dtype).to(device)
    return model, processor, name_or_path


def refuse_given(options: dict, one: str, several: str) -> None:
    """Refuse the options of `options` (flag -> value, None where not given) that were given, naming them,
    followed by `one` (one option given) or `several`."""
    if given := [flag for flag, value in options.items() if value is not None]:
        raise UsageError(f"{', '.join(given)} {one if len(given) == 1 else several}")


def check_option_combinations(args: argparse.Namespace) -> None:
    """Refuse options the run would ignore: each names the option and what it needs."""
    if args.lmms_eval_tasks:
        shapes_only = {"--budgets": args.budgets, "--no-budgets": args.no_budgets or None,
                       "--importance": args.importance, "--plot": args.plot}  # fmt: skip
        where = "to Shapes-VQA, not to --lmms-eval-tasks"
        refuse_given(shapes_only, f"applies {where}; drop it", f"apply {where}; drop them")
        return
    lmms_only = {"--lmms-eval-python": args.lmms_eval_python, "--lmms-eval-include-path": args.lmms_eval_include_path,
                 "--lmms-eval-output": args.lmms_eval_output}  # fmt: skip
    needed = "--lmms-eval-tasks (e.g. pope,mme); pass that or drop"
    refuse_given(lmms_only, f"needs {needed} it", f"need {needed} them")
    if args.importance is not None and args.methods == ["none"]:
        raise UsageError("--importance does nothing with --methods none (every token kept); drop it")
    if args.budgets is not None and not any(method in BUDGETED for method in args.methods):
        raise UsageError(f"--budgets apply to {', '.join(BUDGETED)}; --methods has none of them")


def check_eval_model(name_or_path: str) -> None:
    """--model as a shipped mini model or a checkpoint that exists, named before any loading: "tiny" (the
    demo's random model) would otherwise be looked up on the Hub, a wrong path end in a loader's error."""
    if name_or_path in SHIPPED_MINI_MODELS:
        return
    if name_or_path == "tiny" and not Path(name_or_path).exists():
        raise UsageError(
            f"--model tiny: eval takes the shipped mini models ({', '.join(SHIPPED_MINI_MODELS)}) or a "
            "checkpoint; for the tiny random model write one with `llava-prumerge export --tiny --out DIR`"
        )
    try:
        check_checkpoint_source(name_or_path)
    except PruMergeError as error:
        raise type(error)(f"--model {name_or_path}: {error}") from error


def run_eval_command(args: argparse.Namespace) -> dict:
    check_option_combinations(args)
    check_eval_model(args.model)
    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")
    if args.lmms_eval_tasks:
        from .lmms import run_lmms_eval_tasks

        return run_lmms_eval_tasks(args)
    budgets = [] if args.no_budgets else args.budgets or DEFAULT_BUDGETS
    print(f"Loading {args.model} ...", flush=True)
    model, processor, description = load_for_eval(args.model)
    if args.importance is not None:
        model.config.importance = args.importance
    threads = torch_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads:
        results, pairs = evaluate_shapes_vqa(
            model,
            processor,
            args.methods,
            budgets,
            split=args.split,
            limit=args.limit,
            batch_size=args.batch_size,
            log=lambda line: print(line, flush=True),
        )
    patches = model.model.image_placeholder_count()
    scored_by = model.config.importance
    note = (
        f"Shapes-VQA {args.split} split, {len(pairs)} questions; model: {description}; "
        f"{patches} patches per image; importance: {scored_by}; accuracy in %"
    )
    print()
    print(results_table(results, note))
    summary = {
        "task": "shapes-vqa",
        "split": args.split,
        "questions": len(pairs),
        "model": args.model,
        "patches_per_image": patches,
        "importance": scored_by,
        "results": [result.to_dict() for result in results],
    }
    if args.json:
        answers = {
            result.configuration.label: [
                {"id": question.id, "answer": question.answer, "prediction": prediction}
                for (question, _), prediction in zip(pairs, result.predictions, strict=True)
            ]
            for result in results
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**summary, "answers": answers}, indent=1) + "\n")
        print(f"JSON: {args.json}")
    if args.plot:
        title = f"Shapes-VQA ({args.split}, {len(pairs)} questions): {description}"
        print(f"Plot: {accuracy_plot(results, args.plot, title)}")
    return summary
