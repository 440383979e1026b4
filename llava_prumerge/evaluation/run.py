"""The `llava-prumerge eval` run: load the model, evaluate, print the table, write JSON and the plot."""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from ..common.loading import load_processor, load_prumerge_model
from ..common.outputs import check_output_path
from ..common.timing import torch_threads
from ..mini import SHIPPED_MINI_MODELS
from .evaluate import evaluate_shapes_vqa
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


def run_eval_command(args: argparse.Namespace) -> dict:
    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")
    if args.lmms_eval_tasks:
        from .lmms import run_lmms_eval_tasks

        return run_lmms_eval_tasks(args)
    budgets = [] if args.no_budgets else args.budgets
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
