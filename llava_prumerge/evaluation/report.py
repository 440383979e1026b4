"""The eval results as a table, as JSON, and as the field's picture: accuracy against visual tokens."""

from __future__ import annotations

import math
from pathlib import Path

from .shapes_vqa import QUESTION_TYPES


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def results_table(results, header_note: str = "") -> str:
    """A markdown table, one row per configuration (accuracies in percent)."""
    lines = [header_note] if header_note else []
    lines += [
        "| method | budget | visual tokens / image | accuracy | "
        + " | ".join(QUESTION_TYPES)
        + " | prefill ms / question |",
        "|---|---|---:|---:|" + "---:|" * len(QUESTION_TYPES) + "---:|",
    ]
    for result in results:
        config = result.configuration
        budget = (
            "all" if config.method == "none" else ("adaptive" if config.budget is None else config.budget)
        )
        per_type = " | ".join(_percent(result.scores.type_accuracy(kind)) for kind in QUESTION_TYPES)
        lines.append(
            f"| {config.method} | {budget} | {result.mean_visual_tokens:.1f} | "
            f"{_percent(result.scores.accuracy)} | {per_type} | {result.prefill_ms_per_question:.2f} |"
        )
    return "\n".join(lines) + "\n"


def accuracy_plot(results, out: Path, title: str) -> Path:
    """Accuracy (%) against mean visual tokens per image: a line per method over its fixed budgets, a
    marker for each adaptive count, a dashed line for `none`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.8), dpi=100)
    axes = figure.subplots()
    methods = list(dict.fromkeys(result.configuration.method for result in results))
    colors = dict(zip(methods, ("black", "tab:red", "tab:blue", "tab:green", "tab:orange"), strict=False))
    for method in methods:
        rows = [r for r in results if r.configuration.method == method]
        if method == "none":
            axes.axhline(100 * rows[0].scores.accuracy, color="grey", linestyle="--", linewidth=1)
            axes.plot(
                rows[0].mean_visual_tokens,
                100 * rows[0].scores.accuracy,
                "s",
                color=colors[method],
                label=f"none ({rows[0].mean_visual_tokens:.0f} tokens)",
            )
            continue
        fixed = sorted(
            (r for r in rows if r.configuration.budget is not None), key=lambda r: r.mean_visual_tokens
        )
        if fixed:
            axes.plot(
                [r.mean_visual_tokens for r in fixed],
                [100 * r.scores.accuracy for r in fixed],
                "o-",
                color=colors[method],
                label=f"{method}, fixed budgets",
            )
        for r in rows:
            if r.configuration.budget is None:
                axes.plot(
                    r.mean_visual_tokens,
                    100 * r.scores.accuracy,
                    "*",
                    markersize=14,
                    color=colors[method],
                    label=f"{method}, adaptive",
                )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("visual tokens per image (mean)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
