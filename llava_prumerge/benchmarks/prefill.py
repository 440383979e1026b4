"""`bench --whole-prefill`: time to first token as users get it, one call of the model's forward.

The stage-by-stage passes of `measure` time the vision path, the reducer, compaction and the LLM each with a
synchronization between them, which at batch 1 on a GPU (bound by kernel launches) costs about what the
tokens save. Here the model runs as a user calls it, pixels to the first token's logits, and with
`--compile` as a user compiles it: whole. A fixed budget's prompt holds one placeholder per reduced token,
as its folder's processor writes it, so nothing is read back and the prefill is one graph (CUDA graphs with
`reduce-overhead`); `none` keeps stock's prompt, in place; adaptive methods get stock's prompt and read their
counts back, where the graph breaks. LLaVA-1.5 images only (the layout of other architectures' budgets
follows their views, frames or image sizes).
"""

from __future__ import annotations

import statistics

import torch

from ..common.timing import PhaseTimer
from ..errors import UsageError
from ..modeling.reduction_settings import ReductionSettings
from .compiling import compiled
from .measure import method_reductions
from .modalities import ImagePath
from .models import BenchInputs, BenchSubject, make_inputs
from .report import format_table

# torch.compile keeps one graph per method and batch size (and several for an adaptive method's breaks)
RECOMPILE_LIMIT = 64
PREFILL_COLUMNS = (
    ("method", 14, "method", "s", ""),
    ("batch", 5, "batch_size", "d", ""),
    ("tokens/img", 10, "visual_tokens_per_image", ".1f", ""),
    ("seq len", 7, "sequence_length", "d", ""),
    ("TTFT ms", 9, "ttft_ms", ".1f", ""),
    ("fastest", 8, lambda row: row["ttft_ms_range"][0], ".1f", ""),
    ("slowest", 8, lambda row: row["ttft_ms_range"][1], ".1f", ""),
    ("x none", 7, "ttft_speedup_vs_none", ".2f", "x"),
)


def check_whole_prefill_applies(subject: BenchSubject) -> None:
    """LLaVA-1.5-style images only: their fixed budgets have one prompt layout whatever the image."""
    if type(subject.visual) is not ImagePath:
        raise UsageError(
            "--whole-prefill measures LLaVA-1.5-style images (--arch llava-1.5-7b, llava-1.5-13b, tiny, or such a "
            "checkpoint); for other architectures, time the stages (without --whole-prefill)"
        )


def prompt_for(subject: BenchSubject, inputs: BenchInputs, settings: ReductionSettings) -> BenchInputs:
    """The prompt the method's folder would get from its processor: for a fixed budget, each image's run of
    placeholders cut to the budget (one per reduced token); else stock's."""
    if settings.adaptive or not settings.reduces or settings.num_visual_tokens is None:
        return inputs
    image = subject.model.config.image_token_id
    placeholders = inputs.input_ids == image  # [B, L]: one run per row, at the same place in every row
    start = int(placeholders[0].int().argmax())
    budget_ids = torch.cat(
        [inputs.input_ids[:, :start], inputs.input_ids[:, start : start + settings.num_visual_tokens],
         inputs.input_ids[:, start + int(placeholders[0].sum()) :]], dim=1,
    )  # fmt: skip
    return BenchInputs(budget_ids, torch.ones_like(budget_ids), inputs.pixel_values)


def first_token(
    model, inputs: BenchInputs, settings: ReductionSettings
) -> tuple[torch.Tensor, list[int], int]:
    """The prefill: (the first generated token per row, visual tokens per image, the LLM's sequence length)."""
    output = model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        pixel_values=inputs.pixel_values,
        reduction=settings,
        logits_to_keep=1,
    )
    return output.logits[:, -1].argmax(dim=-1), output.visual_token_counts, output.attention_mask.shape[1]


def run_whole_prefill(
    subject: BenchSubject,
    batch_sizes: list[int],
    methods: list[str],
    text_tokens: int = 40,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    compile_choice: str | None = None,
) -> list[dict]:
    """One row per batch size and method ("none" first, the baseline of the ratio): the median time of the
    model's forward from pixels to the first token, its spread, and what reached the LLM."""
    check_whole_prefill_applies(subject)
    reductions = method_reductions(subject, methods)
    methods = list(reductions)
    prefill = compiled(first_token, compile_choice, dynamic=False)  # a graph per shape, as CUDA graphs need
    device = subject.model.device
    rows = []
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch.inference_mode(), torch._dynamo.config.patch(**{limit: RECOMPILE_LIMIT}):
        for batch_size in batch_sizes:
            stock_inputs = make_inputs(subject, batch_size, text_tokens, seed)
            prompts = {label: prompt_for(subject, stock_inputs, reductions[label]) for label in methods}
            seconds, results = {label: [] for label in methods}, {}
            for repeat in range(warmup + repeats):
                for label in methods:  # interleaved, so that load drifts hit every method alike
                    timer = PhaseTimer(device)
                    with timer("prefill"):
                        results[label] = prefill(subject.model, prompts[label], reductions[label])
                    if repeat >= warmup:
                        seconds[label].append(timer.seconds["prefill"])
            for label in methods:
                _, counts, length = results[label]
                rows.append(
                    {
                        "arch": subject.arch,
                        "checkpoint": subject.checkpoint,
                        "layers": subject.llm_layers,
                        "device": device.type,
                        "dtype": str(subject.model.dtype).removeprefix("torch."),
                        "threads": torch.get_num_threads(),
                        "compile": compile_choice,
                        "repeats": repeats,
                        "warmup": warmup,
                        "batch_size": batch_size,
                        "method": label,
                        "prompt_layout": "stock" if prompts[label] is stock_inputs else "budget",
                        "visual_tokens_per_image": sum(counts) / len(counts),
                        "sequence_length": length,
                        "ttft_ms": statistics.median(seconds[label]) * 1e3,
                        "ttft_ms_range": [min(seconds[label]) * 1e3, max(seconds[label]) * 1e3],
                    }
                )
    baselines = {row["batch_size"]: row["ttft_ms"] for row in rows if row["method"] == "none"}
    for row in rows:
        row["ttft_speedup_vs_none"] = baselines[row["batch_size"]] / row["ttft_ms"]
    return rows


def format_prefill_report(subject: BenchSubject, rows: list[dict]) -> str:
    """The table of `run_whole_prefill`'s rows, with what was run."""
    first = rows[0]
    compiled_as = f"compiled ({first['compile']})" if first["compile"] else "eager"
    lines = [
        f"{subject.arch or subject.checkpoint}: {subject.llm_layers} LLM layers, {first['device']} {first['dtype']}, "
        f"{first['threads']} threads; the model's forward, pixels to the first token, {compiled_as}; median of "
        f"{first['repeats']} passes after {first['warmup']} warm-up",
        "fixed budgets get prompts in the budget's layout (one placeholder per reduced token), the others stock's",
        "",
        *format_table(rows, PREFILL_COLUMNS),
    ]
    return "\n".join(lines)
