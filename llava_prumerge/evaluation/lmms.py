"""`llava-prumerge eval --lmms-eval-tasks`: the standard benchmarks through lmms-eval, beside the paper's numbers.

For each method, lmms-eval runs in its own process (`python -m lmms_eval --model llava_prumerge
--model_args pretrained=MODEL,token_reduction=METHOD --tasks TASKS`, the interpreter given by
--lmms-eval-python); its results JSON is read back and each task's headline metric is printed in
the paper's units beside the paper's LLaVA-1.5-7B rows (none / PruMerge / PruMerge+; the paper's
PruMerge rows are after its LoRA fine-tuning).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..common.outputs import check_output_path
from ..errors import UsageError

# task -> (name in the paper's table, result key in lmms-eval's results, scale to the paper's units)
TASK_METRICS = {
    "vqav2_val": ("VQAv2", "exact_match,none", 100.0),
    "scienceqa_img": ("SQA-IMG", "exact_match,none", 100.0),
    "textvqa_val": ("TextVQA", "exact_match,none", 100.0),
    "pope": ("POPE (F1)", "pope_f1_score,none", 100.0),
    "mme": ("MME (perception)", "mme_perception_score,none", 1.0),
    "mmbench_en_dev": ("MMBench", "gpt_eval_score,none", 1.0),
    "gqa": ("GQA", "exact_match,none", 100.0),
}
# LLaVA-1.5-7B in the PruMerge paper (Table 1): none / PruMerge / PruMerge+.
PAPER = {
    "vqav2_val": (78.5, 72.0, 76.8),
    "scienceqa_img": (66.8, 68.5, 68.3),
    "textvqa_val": (58.2, 56.0, 57.1),
    "pope": (85.9, 76.3, 84.0),
    "mme": (1510.7, 1350.3, 1462.4),
    "mmbench_en_dev": (64.3, 60.9, 64.9),
}
PAPER_METHODS = ("none", "prumerge", "prumerge_plus")


def lmms_eval_command(
    python: str, model: str, method: str, tasks: list[str], output: Path, args
) -> list[str]:
    model_args = f"pretrained={model},token_reduction={method}"
    command = [
        python,
        "-m",
        "lmms_eval",
        "--model",
        "llava_prumerge",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(tasks),
        "--batch_size",
        str(args.batch_size),
        "--output_path",
        str(output),
        "--log_samples",
    ]
    if args.lmms_eval_include_path:
        command += ["--include_path", str(args.lmms_eval_include_path)]
    if args.limit:
        command += ["--limit", str(args.limit)]
    return command


def read_results(output: Path) -> dict:
    """The `results` of the newest results JSON lmms-eval wrote under `output`."""
    for path in sorted(output.rglob("*_results.json"), key=lambda path: path.stat().st_mtime, reverse=True):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "results" in data:
            return data["results"]
    raise UsageError(
        f"lmms-eval wrote no results under {output}; see its output above (it exits 0 even when a task fails)"
    )


def headline(task: str, task_results: dict) -> tuple[str, float]:
    """(metric name, value in the paper's units) of one task's results."""
    if task in TASK_METRICS:
        _, key, scale = TASK_METRICS[task]
        if key in task_results:
            return key.split(",")[0], scale * float(task_results[key])
    numbers = {
        key: value
        for key, value in task_results.items()
        if isinstance(value, (int, float)) and "stderr" not in key and key != "alias"
    }
    if not numbers:
        return "-", math.nan
    key = sorted(numbers)[0]
    return key.split(",")[0], 100.0 * float(numbers[key]) if "exact_match" in key else float(numbers[key])


def comparison_table(
    scores: dict[str, dict[str, tuple[str, float]]], methods: list[str], tasks: list[str]
) -> str:
    """Markdown: one row per task, ours per method, then the paper's LLaVA-1.5-7B none / PruMerge / PruMerge+."""
    lines = [
        "| task | metric | " + " | ".join(methods) + " | paper 7B none / PruMerge / PruMerge+ |",
        "|---|---|" + "---:|" * len(methods) + "---|",
    ]
    for task in tasks:
        metric = next((scores[m][task][0] for m in methods if task in scores[m]), "-")
        ours = [
            f"{scores[m][task][1]:.1f}" if task in scores[m] and not math.isnan(scores[m][task][1]) else "-"
            for m in methods
        ]
        paper = " / ".join(f"{value:g}" for value in PAPER[task]) if task in PAPER else "-"
        name = TASK_METRICS.get(task, (task,))[0]
        lines.append(f"| {name} | {metric} | " + " | ".join(ours) + f" | {paper} |")
    return "\n".join(lines) + "\n"


def check_python(python: str) -> None:
    """--lmms-eval-python as a program this user can run, named before any work (subprocess would raise
    FileNotFoundError or PermissionError without the option's name)."""
    path = Path(python)
    if path.is_dir():
        raise UsageError(
            f"--lmms-eval-python {python} is a folder; pass the interpreter, e.g. DIR/bin/python"
        )
    if shutil.which(python) is None:
        if os.sep not in python:  # a bare name is looked up on PATH, as subprocess does
            problem = "is not on PATH"
        else:
            problem = "is not executable" if path.is_file() else "does not exist"
        raise UsageError(
            f"--lmms-eval-python {python} {problem}; pass the Python that has lmms-eval "
            "(bash scripts/setup_lmms_env.sh .venvs/lmms, then --lmms-eval-python .venvs/lmms/bin/python)"
        )


def run_lmms_eval_tasks(args: argparse.Namespace) -> dict:
    python = args.lmms_eval_python or sys.executable
    check_python(python)
    tasks = args.lmms_eval_tasks
    methods = args.methods
    check_output_path(args.lmms_eval_output, "--lmms-eval-output", folder=True)
    output_root = args.lmms_eval_output or Path(tempfile.mkdtemp(prefix="lmms-eval-"))
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model == "mini":  # lmms-eval loads a folder: write the shipped model as one
            from ..hub_upload.export import save_hub_folder
            from ..mini.model import load_mini

            mini, processor = load_mini()
            model = str(save_hub_folder(mini, processor, Path(scratch) / "mini"))
        scores: dict[str, dict] = {}
        env = {"WANDB_MODE": "disabled", **os.environ}
        for method in methods:
            output = output_root / method
            command = lmms_eval_command(python, model, method, tasks, output, args)
            print("$ " + " ".join(command), flush=True)
            completed = subprocess.run(command, env=env, check=False)
            if completed.returncode:
                raise UsageError(
                    f"lmms-eval failed (exit {completed.returncode}) for {method}; is it installed in {python}? "
                    "(bash scripts/setup_lmms_env.sh .venvs/lmms, then --lmms-eval-python .venvs/lmms/bin/python)"
                )
            results = read_results(output)
            missing = [task for task in tasks if task not in results]
            if missing:
                raise UsageError(f"lmms-eval's results for {method} lack the task(s) {missing}")
            scores[method] = {task: headline(task, results[task]) for task in tasks}
    table = comparison_table(scores, methods, tasks)
    print()
    print(table)
    summary = {
        "tasks": tasks,
        "model": args.model,
        "scores": {m: {t: {"metric": v[0], "value": v[1]} for t, v in s.items()} for m, s in scores.items()},
        "paper_llava_1_5_7b": {
            task: dict(zip(PAPER_METHODS, PAPER[task], strict=True)) for task in tasks if task in PAPER
        },
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary
