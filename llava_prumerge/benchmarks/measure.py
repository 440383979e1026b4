"""What `llava-prumerge bench` measures in one pass per method, and the result rows it makes of them."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.cli_args import split_method_label
from ..common.timing import PhaseTimer
from ..errors import UsageError
from ..modeling.reduction_settings import ReductionSettings
from ..modeling.runtime_compat import CACHE_ARGUMENT
from ..modeling.token_reduction import batched_host_reads
from .compiling import compiled
from .models import BenchInputs, BenchSubject, make_inputs


def _load_malloc_trim():
    """glibc's malloc_trim, or None: it hands freed heap memory back to the OS."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory a block uses above what was in use when it started (`increase_bytes`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.measurable = device.type == "cuda" or _can_reset_peak_rss()
        self.increase_bytes: int | None = None
        self._start = 0

    @property
    def description(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated during the pass minus memory_allocated before it"
        if not self.measurable:
            return "not measured: resetting the peak RSS needs Linux's /proc/self/clear_refs"
        return (
            "peak resident set size (VmHWM, reset through /proc/self/clear_refs) during the pass minus the "
            "RSS before it; freed memory is first returned to the OS (gc, malloc_trim)"
        )

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.measurable:
            gc.collect()
            if _MALLOC_TRIM is not None:
                _MALLOC_TRIM(0)
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self._start = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc_info):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.increase_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self.measurable:
            self.increase_bytes = _proc_status_bytes("VmHWM") - self._start


def kv_cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def method_settings(subject: BenchSubject, label: str) -> ReductionSettings:
    """The reducer settings of a method label: the model's with its method, and with "@TOKENS" a fixed
    budget per image (num_visual_tokens) or per video (num_video_tokens); checked before any pass."""
    method, fixed_tokens = split_method_label(label)
    settings = subject.model.config.reduction_settings.replace(token_reduction=method)
    if fixed_tokens is None:
        return settings
    visual = subject.visual
    stock_tokens = visual.expanded_length(subject.model.config)
    if fixed_tokens > stock_tokens:
        raise UsageError(
            f"--methods {label}: more than the {stock_tokens} tokens of an unreduced {visual.name}"
        )
    settings = settings.replace(adaptive=False, **{visual.budget_field: fixed_tokens})
    visual.check_settings(settings)
    return settings


def method_reductions(subject: BenchSubject, labels: list[str]) -> dict[str, ReductionSettings]:
    """Each method label's reducer settings (`method_settings`), "none" first: the baseline of the ratios,
    always measured."""
    return {label: method_settings(subject, label) for label in ["none", *[m for m in labels if m != "none"]]}


@dataclass(frozen=True)
class Stages:
    """The functions a pass times: the path's own, or compiled (`bench --compile`)."""

    encode: Callable
    reduce: Callable
    language_model: Callable

    @classmethod
    def of(cls, subject: BenchSubject, compile_choice: str | None = None) -> Stages:
        visual, inner = subject.visual, subject.model.model
        return cls(
            compiled(visual.encode, compile_choice),
            compiled(visual.reduce, compile_choice),
            compiled(inner.language_model, compile_choice),
        )


def measure_pass(
    subject: BenchSubject,
    inputs: BenchInputs,
    settings: ReductionSettings,
    new_tokens: int,
    vision_only: bool,
    stages: Stages | None = None,
) -> dict:
    """One pass, image (video) to last decoded token, each phase timed; plus token counts and cache size. Host
    reads are batched as in the model's forward (the checks come back with the compaction's layout)."""
    with batched_host_reads():
        return _measure_pass(subject, inputs, settings, new_tokens, vision_only, stages)


def _measure_pass(subject, inputs, settings, new_tokens, vision_only, stages) -> dict:
    model, inner, visual = subject.model, subject.model.model, subject.visual
    stages = stages or Stages.of(subject)
    timer = PhaseTimer(model.device)
    with timer("vision"):
        encoded = stages.encode(inner, inputs.pixel_values, settings)
    with timer("reducer"):
        reduced = stages.reduce(inner, encoded, settings)
    result = {"seconds": timer.seconds, "tokens": visual.item_counts(visual.token_counts(reduced))}
    if vision_only:
        return result
    with timer("projector_compaction"):  # the reduced tokens this pass has already computed and timed
        compact = inner.compact_inputs(
            inputs.input_ids,
            inputs.attention_mask,
            position_ids=visual.prompt_positions(inner, inputs.input_ids, inputs.attention_mask),
            visual=[visual.tokens(inner, reduced)],
            padding_side="left",
        )
    language_model, embed = stages.language_model, inner.get_input_embeddings()
    with timer("llm_decoder"):
        prefill = language_model(
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            position_ids=compact.position_ids,
            use_cache=True,
        )
    with timer("lm_head"):
        next_tokens = model.lm_head(prefill.last_hidden_state[:, -1]).argmax(dim=-1)  # [B]
    cache = getattr(prefill, CACHE_ARGUMENT)
    result["kv_cache_bytes"] = kv_cache_bytes(cache)
    result["sequence_length"] = compact.attention_mask.shape[1]
    attention_mask, positions = compact.attention_mask, compact.position_ids[..., -1:]  # [(3,) B, 1]
    with timer("decode"):
        for _ in range(new_tokens):
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(next_tokens), 1)], dim=1)
            positions = positions + 1
            step = language_model(
                inputs_embeds=embed(next_tokens[:, None]),
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=True,
                **{CACHE_ARGUMENT: cache},
            )
            next_tokens = model.lm_head(step.last_hidden_state[:, -1]).argmax(dim=-1)
    return result


def time_stock_vision(subject: BenchSubject, pixel_values: torch.Tensor) -> float:
    """The stock model's vision path (LlavaModel.get_image_features, VideoLlavaModel.get_video_features before
    the projector): every layer runs and every hidden state is kept (picking the feature layer's is a view,
    not timed)."""
    visual = subject.visual
    tower = visual.tower(subject.model.model)
    timer = PhaseTimer(subject.model.device)
    with timer("stock_vision"):
        visual.run_stock_tower(tower, pixel_values)
    return timer.seconds["stock_vision"]


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def _range_ms(seconds: list[float], per: int = 1) -> list[float]:
    """[fastest, slowest] of the passes in ms (divided by `per`): how far they spread around the median."""
    return [min(seconds) * 1e3 / per, max(seconds) * 1e3 / per]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# Row fields that may be None: the checkpoint (random weights), peak memory (not measurable on every OS), the
# fixed budget (adaptive methods), the compile backend (without --compile).
NULLABLE_FIELDS = frozenset(
    {"checkpoint", "peak_memory_increase_bytes", "peak_memory_vs_none", "fixed_tokens", "compile"}
)
LLM_FIELDS = (
    "sequence_length",
    "projector_compaction_ms",
    "llm_prefill_ms",
    "llm_prefill_ms_per_layer",
    "llm_prefill_ms_per_layer_range",
    "lm_head_ms",
    "ttft_ms",
    "ttft_ms_range",
    "decode_ms",
    "decode_tokens_per_s",
    "kv_cache_bytes_per_sample",
    "estimated_full_depth_prefill_ms",
    "estimated_full_depth_ttft_ms",
    "estimated_full_depth_kv_cache_bytes_per_sample",
)


def summarize(
    subject: BenchSubject,
    settings: dict,
    batch_size: int,
    label: str,
    passes: list[dict],
    peaks: list[int | None],
    stock_vision_s: list[float],
    qk_s: list[float],
) -> dict:
    """One result row: medians over the passes; ratios to "none" are filled in by add_ratios."""
    seconds = {phase: [p["seconds"][phase] for p in passes] for phase in passes[0]["seconds"]}
    counts, visual = passes[0]["tokens"], subject.visual
    method, fixed_tokens = split_method_label(label)
    per_item, fewest, most = visual.count_fields
    row = {
        "arch": subject.arch,
        "checkpoint": subject.checkpoint,
        "layers": subject.llm_layers,
        "full_depth_layers": subject.full_depth_layers,
        **settings,
        "batch_size": batch_size,
        "method": label,
        "token_reduction": method,
        "fixed_tokens": fixed_tokens,
        per_item: sum(counts) / len(counts),
        fewest: min(counts),
        most: max(counts),
        "tokens_vs_stock": sum(counts) / len(counts) / visual.expanded_length(subject.model.config),
        "vision_ms": _median_ms(seconds["vision"]),
        "stock_vision_ms": _median_ms(stock_vision_s),
        "reduction_layer_qk_ms": 0.0 if method == "none" else _median_ms(qk_s),
        "reducer_ms": _median_ms(seconds["reducer"]),
        "peak_memory_increase_bytes": None if None in peaks else statistics.median(peaks),
    }
    row["vision_vs_stock"] = row["vision_ms"] / row["stock_vision_ms"]
    if "llm_decoder" not in seconds:  # --vision-only
        return {**row, **dict.fromkeys(LLM_FIELDS)}
    phases = ("vision", "reducer", "projector_compaction", "llm_decoder", "lm_head")
    ttft_s = [sum(p["seconds"][phase] for phase in phases) for p in passes]
    ttft_ms = _median_ms(ttft_s)
    decoder_ms, head_ms = _median_ms(seconds["llm_decoder"]), _median_ms(seconds["lm_head"])
    per_layer_ms = decoder_ms / subject.llm_layers
    kv_per_sample = passes[0]["kv_cache_bytes"] / batch_size
    decode_ms = _median_ms(seconds["decode"]) if settings["new_tokens"] else None
    return {
        **row,
        "sequence_length": passes[0]["sequence_length"],
        "projector_compaction_ms": _median_ms(seconds["projector_compaction"]),
        "llm_prefill_ms": _median_ms([p["seconds"]["llm_decoder"] + p["seconds"]["lm_head"] for p in passes]),
        "llm_prefill_ms_per_layer": per_layer_ms,
        "llm_prefill_ms_per_layer_range": _range_ms(seconds["llm_decoder"], subject.llm_layers),
        "lm_head_ms": head_ms,
        "ttft_ms": ttft_ms,
        "ttft_ms_range": _range_ms(ttft_s),
        "decode_ms": decode_ms,
        "decode_tokens_per_s": batch_size * settings["new_tokens"] / decode_ms * 1e3 if decode_ms else None,
        "kv_cache_bytes_per_sample": kv_per_sample,
        "estimated_full_depth_prefill_ms": per_layer_ms * subject.full_depth_layers + head_ms,
        "estimated_full_depth_ttft_ms": ttft_ms - decoder_ms + per_layer_ms * subject.full_depth_layers,
        "estimated_full_depth_kv_cache_bytes_per_sample": (
            kv_per_sample / subject.llm_layers * subject.full_depth_layers
        ),
    }


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups (none's time / the method's) and memory ratios (the method's / none's), same batch size."""
    baselines = {row["batch_size"]: row for row in rows if row["method"] == "none"}
    for row in rows:
        none = baselines[row["batch_size"]]
        overhead_ms = row["reduction_layer_qk_ms"] + row["reducer_ms"]
        row["reduction_overhead_vs_vision"] = overhead_ms / none["vision_ms"]
        for field, speedup in (
            ("llm_prefill_ms_per_layer", "prefill_per_layer_speedup_vs_none"),
            ("llm_prefill_ms", "prefill_speedup_vs_none"),
            ("ttft_ms", "ttft_speedup_vs_none"),
            ("estimated_full_depth_ttft_ms", "estimated_full_depth_ttft_speedup_vs_none"),
        ):
            row[speedup] = _ratio(none[field], row[field])
        row["decode_speedup_vs_none"] = _ratio(row["decode_tokens_per_s"], none["decode_tokens_per_s"])
        row["kv_cache_vs_none"] = _ratio(row["kv_cache_bytes_per_sample"], none["kv_cache_bytes_per_sample"])
        row["peak_memory_vs_none"] = _ratio(
            row["peak_memory_increase_bytes"], none["peak_memory_increase_bytes"]
        )


def run_benchmark(
    subject: BenchSubject,
    batch_sizes: list[int],
    methods: list[str],
    text_tokens: int = 40,
    new_tokens: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    vision_only: bool = False,
    seed: int = 0,
    compile_choice: str | None = None,
) -> list[dict]:
    """Result rows for every batch size and method label ("none", the baseline of the ratios, always
    included; "prumerge@256": a fixed budget per image or video); `compile_choice`: see `bench --compile`."""
    reductions = method_reductions(subject, methods)
    methods = list(reductions)
    stages = Stages.of(subject, compile_choice)
    device = subject.model.device
    memory = PeakMemory(device)
    settings = {
        "modality": subject.visual.name,
        "frames": subject.visual.frames,
        "device": device.type,
        "dtype": str(subject.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "text_tokens": text_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "compile": compile_choice,
        "peak_memory_measure": memory.description,
    }
    rows = []
    with torch.inference_mode():
        for batch_size in batch_sizes:
            inputs = make_inputs(subject, batch_size, text_tokens, seed)
            passes = {m: [] for m in methods}
            peaks = {m: [] for m in methods}
            stock_vision_s, qk_s = [], []
            for repeat in range(warmup + repeats):
                measured = repeat >= warmup
                for method in methods:
                    with memory:
                        result = measure_pass(
                            subject, inputs, reductions[method], new_tokens, vision_only, stages
                        )
                    if measured:
                        passes[method].append(result)
                        peaks[method].append(memory.increase_bytes)
                stock = time_stock_vision(subject, inputs.pixel_values)
                qk = subject.visual.time_scoring(subject, batch_size)
                if measured:
                    stock_vision_s.append(stock)
                    qk_s.append(qk)
            for method in methods:
                rows.append(
                    summarize(
                        subject,
                        settings,
                        batch_size,
                        method,
                        passes[method],
                        peaks[method],
                        stock_vision_s,
                        qk_s,
                    )
                )
    add_ratios(rows)
    return rows
