"""What `llava-prumerge bench` prints and plots: tables of the result rows, JSON, bar charts."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.timing import counted
from .modalities import VisualPath
from .models import BenchSubject


def _method_width(rows: list[dict]) -> int:
    """Characters for the method labels: 14, or more for fixed budgets ("prumerge_plus@512")."""
    return max(14, *(len(row["method"]) for row in rows))


def _megabytes(value: float | None) -> float | None:
    return None if value is None else value / 1e6


# A column: (header, width, a row's field or a function of the row, format spec, suffix); "-" where
# there is no value. The token counts are the modality's: per image, or per video.
def time_columns(visual: VisualPath) -> tuple:
    return (
        ("method", 14, "method", "s", ""),
        ("batch", 5, "batch_size", "d", ""),
        (visual.count_header, 10, visual.count_fields[0], ".1f", ""),
        ("vision ms", 10, "vision_ms", ".1f", ""),
        ("qk+reducer ms", 13, lambda row: row["reduction_layer_qk_ms"] + row["reducer_ms"], ".2f", ""),
        ("of vision", 9, lambda row: 100 * row["reduction_overhead_vs_vision"], ".2f", "%"),
        ("proj+compact", 12, "projector_compaction_ms", ".1f", ""),
        ("prefill ms", 10, "llm_prefill_ms", ".1f", ""),
        ("/layer", 8, "llm_prefill_ms_per_layer", ".1f", ""),
        ("x none", 7, "prefill_per_layer_speedup_vs_none", ".2f", "x"),
        ("TTFT ms", 9, "ttft_ms", ".1f", ""),
        ("x none", 7, "ttft_speedup_vs_none", ".2f", "x"),
        ("decode tok/s", 12, "decode_tokens_per_s", ".2f", ""),
    )


def memory_columns(visual: VisualPath) -> tuple:
    _, fewest, most = visual.count_fields
    return (
        ("method", 14, "method", "s", ""),
        ("batch", 5, "batch_size", "d", ""),
        ("tokens min-max", 14, lambda row: f"{row[fewest]}-{row[most]}", "s", ""),
        ("of stock", 8, lambda row: 100 * row["tokens_vs_stock"], ".1f", "%"),
        ("seq len", 7, "sequence_length", "d", ""),
        ("KV MB/sample", 12, lambda row: _megabytes(row["kv_cache_bytes_per_sample"]), ".2f", ""),
        ("x none", 7, "kv_cache_vs_none", ".3f", "x"),
        ("peak mem MB", 11, lambda row: _megabytes(row["peak_memory_increase_bytes"]), ".1f", ""),
        ("x none", 7, "peak_memory_vs_none", ".3f", "x"),
    )


def format_table(rows: list[dict], columns) -> list[str]:
    """Left-aligned first column, right-aligned others; a column widens to its longest cell."""
    cells = [[header for header, *_ in columns]]
    for row in rows:
        cells.append([])
        for _, _, value, spec, suffix in columns:
            value = value(row) if callable(value) else row[value]
            cells[-1].append("-" if value is None else format(value, spec) + suffix)
    widths = [
        max(width, *(len(line[index]) for line in cells)) for index, (_, width, *_) in enumerate(columns)
    ]
    return [
        " ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]


def describe_subject(subject: BenchSubject, rows: list[dict]) -> list[str]:
    first = rows[0]
    config = subject.model.config
    vision = config.vision_config
    text = config.text_config
    weights = "checkpoint weights" if subject.checkpoint else "random weights"
    lines = [
        f"{subject.arch or subject.checkpoint} ({weights}) on {first['device']} ({counted(first['threads'], 'thread')}), {first['dtype']}; "
        f"median of {counted(first['repeats'], 'pass', 'passes')} after {first['warmup']} warm-up, methods interleaved"
        + (
            f"; vision path and LLM compiled ({first['compile']}: a fixed budget's reducer as one graph, an "
            "adaptive one in pieces around its counts, read back)"
            if first.get("compile")
            else ""
        ),
        f"vision: {tower_depth(vision)} layers x {vision.hidden_size}"
        + (
            f", {(vision.image_size // vision.patch_size) ** 2} patches; "
            if hasattr(vision, "image_size")
            else "; "
        )
        + f"LLM: {subject.llm_layers} layers x {text.hidden_size}; "
        f"prompt: {subject.visual.describe_placeholders(config)} + {first['text_tokens']} text tokens",
    ]
    if subject.llm_layers < subject.full_depth_layers:
        lines.append(
            f"NOTE: {subject.llm_layers} of the {subject.full_depth_layers} LLM layers built (real width); "
            "prefill, decode, KV cache and memory below are for these layers."
        )
    return lines


def tower_depth(vision) -> int:
    """The vision tower's layers (Qwen-VL's configs call them `depth`)."""
    return getattr(vision, "num_hidden_layers", None) or vision.depth


def format_report(subject: BenchSubject, rows: list[dict]) -> str:
    visual = subject.visual
    lines = describe_subject(subject, rows)
    for columns in (time_columns(visual), memory_columns(visual)):
        lines += ["", *format_table(rows, columns)]
    lines.append("")
    for row in rows:
        if row["method"] == "none":
            lines.append(
                f"{visual.stock_path} (all {tower_depth(subject.model.config.vision_config)} layers, "
                f"output_hidden_states) at batch {row['batch_size']}: {row['stock_vision_ms']:.1f} ms"
            )
        else:
            lines.append(
                f"  {row['method']} vision path ({visual.vision_path(subject.model.config)}): "
                f"{row['vision_ms']:.1f} ms = {row['vision_vs_stock']:.3f} x stock"
            )
    if rows[0]["ttft_ms_range"] is not None and rows[0]["repeats"] > 1:
        lines += ["", f"spread over the {rows[0]['repeats']} passes (fastest-slowest):"]
        width = _method_width(rows)
        for row in rows:
            prefill, ttft = row["llm_prefill_ms_per_layer_range"], row["ttft_ms_range"]
            lines.append(
                f"  {row['method']:<{width}} batch {row['batch_size']:>3}: prefill/layer "
                f"{prefill[0]:.1f}-{prefill[1]:.1f} ms, TTFT {ttft[0]:.1f}-{ttft[1]:.1f} ms"
            )
    lines += timing_cautions(rows)
    if subject.llm_layers < subject.full_depth_layers and rows[0]["estimated_full_depth_ttft_ms"] is not None:
        lines.append("")
        lines.append(
            f"ESTIMATED full-depth ({subject.full_depth_layers} LLM layers) time to first token, from the measured "
            "per-layer prefill and vision times (not measured end to end):"
        )
        width = _method_width(rows)
        for row in rows:
            lines.append(
                f"  {row['method']:<{width}} batch {row['batch_size']:>3}: {row['estimated_full_depth_ttft_ms']:>10.1f} ms "
                f"({row['estimated_full_depth_ttft_speedup_vs_none']:.2f}x none), KV cache "
                f"{row['estimated_full_depth_kv_cache_bytes_per_sample'] / 1e6:.1f} MB/sample"
            )
    lines.append("")
    lines.append(f"peak memory: {rows[0]['peak_memory_measure']}")
    return "\n".join(lines)


def timing_cautions(rows: list[dict]) -> list[str]:
    """Lines that say which time-to-first-token comparisons with "none" not to trust, and why: the passes
    of the two overlap (the difference is within this machine's noise), or the method is slower."""
    baselines = {row["batch_size"]: row for row in rows if row["method"] == "none"}
    cautions = []
    for row in rows:
        none = baselines.get(row["batch_size"])
        if row["method"] == "none" or none is None or row.get("ttft_speedup_vs_none") is None:
            continue
        where = f"{row['method']} at batch {row['batch_size']}"
        ranges = row["ttft_ms_range"], none["ttft_ms_range"]
        if (
            row["repeats"] > 1
            and None not in ranges
            and ranges[0][0] <= ranges[1][1]
            and ranges[1][0] <= ranges[0][1]
        ):
            cautions.append(
                f"  {where}: its TTFT passes overlap none's, so the {row['ttft_speedup_vs_none']:.2f}x is within "
                "this machine's noise (busy? rerun with more --repeats, or fewer --threads than free cores)"
            )
        elif row["ttft_speedup_vs_none"] < 1:
            cautions.append(
                f"  {where}: slower than none ({row['ttft_speedup_vs_none']:.2f}x TTFT): at this size the reducer's "
                "fixed cost outweighs the prefill it saves (see the LLM prefill column for what it does save)"
            )
    return ["", "CAUTION:", *cautions] if cautions else []


BENCH_PLOT_PANELS = (
    ("ttft_ms", "time to first token (ms)", 1),
    ("llm_prefill_ms_per_layer", "LLM prefill per layer (ms)", 1),
    ("kv_cache_bytes_per_sample", "KV cache per sample (MB)", 1e-6),
    ("peak_memory_increase_bytes", "peak memory increase (MB)", 1e-6),
    ("vision_ms", "vision tower (ms)", 1),
    ("reducer_ms", "reducer (ms)", 1),
)
REDUCER_PLOT_PANELS = (("vectorised_ms", "vectorised reducer (ms)", 1), ("loop_ms", "per-token loop (ms)", 1))


def plot_rows(rows: list[dict], panels, path: str | Path, title: str) -> None:
    """Bars per method, grouped by batch size, one panel per field that has values."""
    from matplotlib.figure import Figure  # no pyplot: no global backend; savefig renders with Agg

    panels = [p for p in panels if any(row.get(p[0]) is not None for row in rows)][:4]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    batch_sizes = list(dict.fromkeys(row["batch_size"] for row in rows))
    figure = Figure(figsize=(5 * min(2, len(panels)), 3.6 * ((len(panels) + 1) // 2)), layout="constrained")
    axes = figure.subplots((len(panels) + 1) // 2, min(2, len(panels)), squeeze=False).flatten()
    width = 0.8 / len(methods)
    for ax, (field, label, scale) in zip(axes, panels, strict=False):  # spare axes are hidden below
        for index, method in enumerate(methods):
            values = {r["batch_size"]: r[field] for r in rows if r["method"] == method}
            heights = [(values.get(b) or 0) * scale for b in batch_sizes]
            ax.bar(
                [i + (index - (len(methods) - 1) / 2) * width for i in range(len(batch_sizes))],
                heights,
                width,
                label=method,
            )
        ax.set_xticks(range(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
        ax.set_title(label)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(methods))
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def print_results(rows: list[dict], json_path: str | None, report) -> None:
    """The tables (`report()`), or the JSON rows instead (json_path "-"), or both (JSON to a file)."""
    if json_path == "-":
        print(json.dumps(rows, indent=2))
        return
    print(report())
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n")
