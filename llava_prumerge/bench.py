"""Measured benchmark of LLaVA with all visual tokens ("none"), PruMerge and PruMerge+.

Runs a checkpoint (--model: a local folder or a Hub id) or a named architecture with random
weights (--arch; --layers N keeps the real width but builds only N LLM layers, so that a
7B-shaped model fits a small machine). Per method and batch size, the median over --repeats
passes (after --warmup passes; methods interleaved, so load drifts hit all of them alike) of:
vision tower (encode_patches), reducer (reduce_patches), projector + compaction, LLM prefill
(decoder layers with use_cache=True, then lm_head on the last position), time to first token
(their sum), decode (--new-tokens greedy steps from the prefilled cache), visual tokens per image,
KV-cache bytes (from the cache tensors after prefill), peak memory, and their ratios to "none".
The q/k work the reducer adds in the vision tower is timed on its own, and the stock LLaVA vision
path (all layers with output_hidden_states, as LlavaModel.get_image_features) is timed alongside.

Inputs are made in code: synthetic images through the image processor, and the prompt a stock
processor would produce (`<image>` expanded to image_seq_length placeholders) with --text-tokens
random text ids. Image preprocessing is not timed. Fields named estimated_* are not measured:
they scale the measured per-layer prefill time (and KV cache) to the architecture's full depth.

--reducer-only times the vectorised reducer against the per-token loop (llava_prumerge.bench_reducer).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, LlavaImageProcessor

from . import bench_reducer
from .configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from .modeling.modeling_llava_prumerge import CACHE_ARGUMENT, LlavaPruMergeForConditionalGeneration
from .modeling.token_reduction import class_attention
from .roofline import ARCHITECTURES
from .tiny import SPECIAL_TOKENS as TINY_SPECIAL_TOKENS
from .tiny import tiny_config

METHODS = ("none", "prumerge", "prumerge_plus")
RANDOM_ARCHITECTURES = ("llava-1.5-7b", "llava-1.5-13b", "tiny")  # tiny: llava_prumerge.tiny's model
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A random CLIP has a near-uniform [CLS] attention. A wider initialisation makes it peaked, as a
# trained CLIP's is; 13 was tuned on this benchmark's synthetic images so that PruMerge keeps about
# 33 tokens per image (the paper: 32 on average, 5.5%, plus the summary token).
PEAKED_ATTENTION_INIT = 13.0
CLIP_VIT_L_14_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "initializer_factor": PEAKED_ATTENTION_INIT,
}
# llava-hf's LLaVA-1.5 adds <image> (id 32000) and <pad> (32001) to Llama's 32000 ids and pads to 32064.
LLAVA_HF_VOCAB_PADDING = 64
LLAMA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
# Fraction of the available memory the weights may take: activations and the KV cache need the rest.
WEIGHT_MEMORY_BUDGET = 0.8


@dataclass
class BenchSubject:
    """A model to benchmark with what is needed to make its inputs."""

    model: LlavaPruMergeForConditionalGeneration
    image_processor: object
    arch: str | None  # a RANDOM_ARCHITECTURES name (random weights), or None
    checkpoint: str | None  # the --model folder or Hub id, or None
    llm_layers: int  # LLM layers built and timed
    full_depth_layers: int  # LLM layers of the real model
    bos_token_id: int | None
    text_token_ids: torch.Tensor  # ids the random text is drawn from (no special or image ids)


@dataclass
class BenchInputs:
    input_ids: torch.Tensor  # [B, L] bos, image_seq_length image placeholders, text
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor  # [B, 3, H, W]


# ---------------------------------------------------------------------------------------------
# Models


@dataclass
class RandomArchitecture:
    config: LlavaPruMergeConfig
    full_depth_layers: int  # LLM layers of the real model
    text_token_ids: torch.Tensor  # ordinary text ids: no special, image or vocabulary-padding ids


def random_architecture(arch: str, layers: int | None = None) -> RandomArchitecture:
    """LLaVA-1.5's config (CLIP ViT-L/14-336, layer -2 features, Llama LLM), or the tiny model's,
    with `layers` LLM layers (default: all)."""
    if arch == "tiny":
        config = tiny_config()
        first_text_id, end_text_id = len(TINY_SPECIAL_TOKENS), config.text_config.vocab_size
    else:
        shape = ARCHITECTURES[arch]
        config = LlavaPruMergeConfig(
            vision_config=CLIP_VIT_L_14_336,
            text_config={
                "model_type": "llama",
                "hidden_size": shape.hidden_size,
                "intermediate_size": shape.intermediate_size,
                "num_hidden_layers": shape.num_layers,
                "num_attention_heads": shape.num_heads,
                "num_key_value_heads": shape.num_kv_heads,
                "vocab_size": shape.vocab_size + LLAVA_HF_VOCAB_PADDING,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "pad_token_id": shape.vocab_size + 1,
            },
            image_token_index=shape.vocab_size,
            image_seq_length=(336 // 14) ** 2,
            pad_token_id=shape.vocab_size + 1,
        )
        first_text_id, end_text_id = len(LLAMA_SPECIAL_TOKENS), shape.vocab_size
    full_depth = config.text_config.num_hidden_layers
    if layers is not None:
        if layers > full_depth:
            raise ValueError(f"--layers {layers} exceeds {arch}'s {full_depth} LLM layers")
        config.text_config.num_hidden_layers = layers
    return RandomArchitecture(config, full_depth, torch.arange(first_text_id, end_text_id))


def _available_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _check_weights_fit(config: LlavaPruMergeConfig, dtype: torch.dtype, device: torch.device) -> None:
    """Fail before building a model that cannot fit, instead of being killed half-way."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForImageTextToText.from_config(config).parameters())
    needed = parameters * torch.finfo(dtype).bits // 8
    available = _available_memory_bytes(device)
    if available is not None and needed > WEIGHT_MEMORY_BUDGET * available:
        raise ValueError(
            f"{parameters / 1e9:.2f}B parameters need {needed / 1e9:.1f} GB in {str(dtype).removeprefix('torch.')} "
            f"but {device} has {available / 1e9:.1f} GB available; build fewer LLM layers with --layers "
            "(e.g. --layers 2) or use --dtype bfloat16"
        )


def build_random_subject(
    arch: str, layers: int | None, dtype: torch.dtype, device: torch.device, seed: int
) -> BenchSubject:
    architecture = random_architecture(arch, layers)
    config = architecture.config
    _check_weights_fit(config, dtype, device)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    image_size = config.vision_config.image_size
    image_processor = LlavaImageProcessor(  # CLIP's mean and std; pads to a square as LLaVA-1.5
        do_pad=True,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return BenchSubject(
        model=model.eval(),
        image_processor=image_processor,
        arch=arch,
        checkpoint=None,
        llm_layers=config.text_config.num_hidden_layers,
        full_depth_layers=architecture.full_depth_layers,
        bos_token_id=config.text_config.bos_token_id,
        text_token_ids=architecture.text_token_ids,
    )


def load_checkpoint_config(spec: str) -> LlavaPruMergeConfig:
    """A PruMerge checkpoint's config, or a stock LLaVA one (e.g. llava-hf/llava-1.5-7b-hf) converted."""
    config = AutoConfig.from_pretrained(spec)
    if isinstance(config, LlavaPruMergeConfig):
        return config
    if config.model_type == "llava":
        return LlavaPruMergeConfig.from_llava_config(config)
    raise ValueError(
        f"--model {spec}: expected a LLaVA or LLaVA-PruMerge checkpoint, got model_type {config.model_type!r}"
    )


def load_checkpoint_subject(spec: str, dtype: torch.dtype, device: torch.device) -> BenchSubject:
    config = load_checkpoint_config(spec)
    model = LlavaPruMergeForConditionalGeneration.from_pretrained(spec, config=config, dtype=dtype)
    processor = AutoProcessor.from_pretrained(spec)
    tokenizer = processor.tokenizer
    excluded = {*tokenizer.all_special_ids, config.image_token_id}
    layers = config.text_config.num_hidden_layers
    return BenchSubject(
        model=model.to(device).eval(),
        image_processor=processor.image_processor,
        arch=None,
        checkpoint=spec,
        llm_layers=layers,
        full_depth_layers=layers,
        bos_token_id=tokenizer.bos_token_id,
        text_token_ids=torch.tensor([i for i in range(len(tokenizer)) if i not in excluded]),
    )


# ---------------------------------------------------------------------------------------------
# Inputs


def synthetic_images(count: int, size: int, seed: int) -> list[Image.Image]:
    """Dark noise with 1 to 4 bright squares, placed differently in each image, so that the [CLS]
    attention, and so the number of tokens PruMerge keeps, differs between images."""
    images = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        square = max(1, size // 7)
        for _ in range(1 + (seed + index) % 4):
            y, x = rng.integers(0, size - square, 2)
            pixels[y : y + square, x : x + square] = rng.integers(150, 255, 3, dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def make_inputs(subject: BenchSubject, batch_size: int, text_tokens: int, seed: int) -> BenchInputs:
    """The expanded prompt a stock LLaVA processor produces: bos, the image placeholders, the text."""
    config = subject.model.config
    generator = torch.Generator().manual_seed(seed)
    bos = [] if subject.bos_token_id is None else [subject.bos_token_id]
    pool = subject.text_token_ids
    rows = []
    for _ in range(batch_size):
        text = pool[torch.randint(len(pool), (text_tokens - len(bos),), generator=generator)].tolist()
        rows.append(bos + [config.image_token_id] * config.image_seq_length + text)
    size = config.vision_config.image_size
    pixel_values = subject.image_processor(
        images=synthetic_images(batch_size, size, seed), return_tensors="pt"
    )["pixel_values"]
    device = subject.model.device
    input_ids = torch.tensor(rows, device=device)
    return BenchInputs(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=pixel_values.to(device, subject.model.dtype),
    )


# ---------------------------------------------------------------------------------------------
# Measurements


class PhaseTimer:
    """Wall-clock seconds of named code blocks; waits for CUDA so that queued work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[phase] = time.perf_counter() - start


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
    raise RuntimeError(f"/proc/self/status has no {field}")


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


def measure_pass(
    subject: BenchSubject, inputs: BenchInputs, method: str, new_tokens: int, vision_only: bool
) -> dict:
    """One pass, image to last decoded token, each phase timed; plus token counts and cache size."""
    model, inner = subject.model, subject.model.model
    model.config.token_reduction = method
    timer = PhaseTimer(model.device)
    with timer("vision"):
        encoded = inner.encode_patches(inputs.pixel_values)
    with timer("reducer"):
        reduced = inner.reduce_patches(encoded)
    result = {"seconds": timer.seconds, "visual_tokens": reduced.num_tokens}
    if vision_only:
        return result
    with timer("projector_compaction"):  # the reduced tokens this pass has already computed and timed
        compact = inner.compact_inputs(
            inputs.input_ids, inputs.pixel_values, inputs.attention_mask, padding_side="left", reduced=reduced
        )
    language_model, embed = inner.language_model, inner.get_input_embeddings()
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
    attention_mask, positions = compact.attention_mask, compact.position_ids[:, -1:]
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
    """Stock LLaVA's vision path (LlavaModel.get_image_features before its projector): every
    layer runs and every hidden state is kept (picking the feature layer's is a view, not timed)."""
    timer = PhaseTimer(subject.model.device)
    with timer("stock_vision"):
        subject.model.model.vision_tower(pixel_values, output_hidden_states=True)
    return timer.seconds["stock_vision"]


def time_reduction_layer_qk(subject: BenchSubject, batch_size: int) -> float:
    """The vision-tower work PruMerge adds: the reduction layer's norm and q/k projections, and the
    [CLS] attention (as in encode_patches), on a hidden state of the real shape."""
    config = subject.model.config
    vision = config.vision_config
    tower = subject.model.model._vision_transformer()
    layer = tower.encoder.layers[config.reduction_layer]
    tokens = 1 + (vision.image_size // vision.patch_size) ** 2
    hidden = torch.randn(
        batch_size, tokens, vision.hidden_size, device=subject.model.device, dtype=subject.model.dtype
    )
    timer = PhaseTimer(subject.model.device)
    with timer("qk"):
        normed = layer.layer_norm1(hidden)
        queries, keys = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
        class_attention(queries, keys, config.class_attention, num_heads=vision.num_attention_heads)
    return timer.seconds["qk"]


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


LLM_FIELDS = (
    "sequence_length",
    "projector_compaction_ms",
    "llm_prefill_ms",
    "llm_prefill_ms_per_layer",
    "lm_head_ms",
    "ttft_ms",
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
    method: str,
    passes: list[dict],
    peaks: list[int | None],
    stock_vision_s: list[float],
    qk_s: list[float],
) -> dict:
    """One result row: medians over the passes; ratios to "none" are filled in by add_ratios."""
    seconds = {phase: [p["seconds"][phase] for p in passes] for phase in passes[0]["seconds"]}
    counts = passes[0]["visual_tokens"]
    row = {
        "arch": subject.arch,
        "checkpoint": subject.checkpoint,
        "layers": subject.llm_layers,
        "full_depth_layers": subject.full_depth_layers,
        **settings,
        "batch_size": batch_size,
        "method": method,
        "visual_tokens_per_image": sum(counts) / len(counts),
        "visual_tokens_min": min(counts),
        "visual_tokens_max": max(counts),
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
    ttft_ms = _median_ms([sum(p["seconds"][phase] for phase in phases) for p in passes])
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
        "lm_head_ms": head_ms,
        "ttft_ms": ttft_ms,
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
) -> list[dict]:
    """Result rows for every batch size and method ("none", the baseline of the ratios, always included)."""
    methods = ["none", *[m for m in methods if m != "none"]]
    device = subject.model.device
    memory = PeakMemory(device)
    settings = {
        "device": device.type,
        "dtype": str(subject.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "text_tokens": text_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
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
                        result = measure_pass(subject, inputs, method, new_tokens, vision_only)
                    if measured:
                        passes[method].append(result)
                        peaks[method].append(memory.increase_bytes)
                stock = time_stock_vision(subject, inputs.pixel_values)
                qk = time_reduction_layer_qk(subject, batch_size)
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


# ---------------------------------------------------------------------------------------------
# Output


def _megabytes(value: float | None) -> float | None:
    return None if value is None else value / 1e6


# (header, width, a row's field or a function of the row, format spec, suffix); "-" where there is no value
TIME_COLUMNS = (
    ("method", 14, "method", "s", ""),
    ("batch", 5, "batch_size", "d", ""),
    ("tokens/img", 10, "visual_tokens_per_image", ".1f", ""),
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
MEMORY_COLUMNS = (
    ("method", 14, "method", "s", ""),
    ("batch", 5, "batch_size", "d", ""),
    ("tokens min-max", 14, lambda row: f"{row['visual_tokens_min']}-{row['visual_tokens_max']}", "s", ""),
    ("seq len", 7, "sequence_length", "d", ""),
    ("KV MB/sample", 12, lambda row: _megabytes(row["kv_cache_bytes_per_sample"]), ".2f", ""),
    ("x none", 7, "kv_cache_vs_none", ".3f", "x"),
    ("peak mem MB", 11, lambda row: _megabytes(row["peak_memory_increase_bytes"]), ".1f", ""),
    ("x none", 7, "peak_memory_vs_none", ".3f", "x"),
)


def format_table(rows: list[dict], columns) -> list[str]:
    """Left-aligned first column, right-aligned others."""

    def line(cells: list[str]) -> str:
        return " ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, (_, width, *_)) in enumerate(zip(cells, columns, strict=True))
        )

    lines = [line([header for header, *_ in columns])]
    for row in rows:
        cells = []
        for _, _, value, spec, suffix in columns:
            value = value(row) if callable(value) else row[value]
            cells.append("-" if value is None else format(value, spec) + suffix)
        lines.append(line(cells))
    return lines


def describe_subject(subject: BenchSubject, rows: list[dict]) -> list[str]:
    first = rows[0]
    config = subject.model.config
    vision = config.vision_config
    text = config.text_config
    weights = "checkpoint weights" if subject.checkpoint else "random weights"
    lines = [
        f"{subject.arch or subject.checkpoint} ({weights}) on {first['device']} ({first['threads']} threads), {first['dtype']}; "
        f"median of {first['repeats']} passes after {first['warmup']} warm-up, methods interleaved",
        f"vision: {vision.num_hidden_layers} layers x {vision.hidden_size}, "
        f"{(vision.image_size // vision.patch_size) ** 2} patches; "
        f"LLM: {subject.llm_layers} layers x {text.hidden_size}; "
        f"prompt: {config.image_seq_length} image placeholders + {first['text_tokens']} text tokens",
    ]
    if subject.llm_layers < subject.full_depth_layers:
        lines.append(
            f"NOTE: only {subject.llm_layers} of the {subject.full_depth_layers} LLM layers are built (real width); "
            "prefill, decode, KV cache and memory below are for these layers."
        )
    return lines


def format_report(subject: BenchSubject, rows: list[dict]) -> str:
    lines = describe_subject(subject, rows)
    lines += ["", *format_table(rows, TIME_COLUMNS), "", *format_table(rows, MEMORY_COLUMNS)]
    lines.append("")
    for row in rows:
        if row["method"] == "none":
            lines.append(
                f"stock LLaVA vision path (all {subject.model.config.vision_config.num_hidden_layers} layers, "
                f"output_hidden_states) at batch {row['batch_size']}: {row['stock_vision_ms']:.1f} ms"
            )
        else:
            lines.append(
                f"  {row['method']} vision path (encode_patches: layers up to -2, reduction-layer q/k): "
                f"{row['vision_ms']:.1f} ms = {row['vision_vs_stock']:.3f} x stock"
            )
    if subject.llm_layers < subject.full_depth_layers and rows[0]["estimated_full_depth_ttft_ms"] is not None:
        lines.append("")
        lines.append(
            f"ESTIMATED full-depth ({subject.full_depth_layers} LLM layers) time to first token, from the measured "
            "per-layer prefill and vision times (not measured end to end):"
        )
        for row in rows:
            lines.append(
                f"  {row['method']:<14} batch {row['batch_size']:>3}: {row['estimated_full_depth_ttft_ms']:>10.1f} ms "
                f"({row['estimated_full_depth_ttft_speedup_vs_none']:.2f}x none), KV cache "
                f"{row['estimated_full_depth_kv_cache_bytes_per_sample'] / 1e6:.1f} MB/sample"
            )
    lines.append("")
    lines.append(f"peak memory: {rows[0]['peak_memory_measure']}")
    return "\n".join(lines)


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
        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n")


def run_reducer_only(args: argparse.Namespace) -> list[dict]:
    """The vectorised reducer against the per-token loop, at the vision tower's patch and feature shape."""
    methods = [m for m in args.methods if m != "none"]
    if not methods:
        raise ValueError("--reducer-only needs prumerge and/or prumerge_plus in --methods")
    # Shapes of the given checkpoint or architecture; LLaVA-1.5's (576 patches x 1024) by default.
    config = (
        load_checkpoint_config(args.model)
        if args.model
        else random_architecture(args.arch or "llava-1.5-7b").config
    )
    vision = config.vision_config
    rows = bench_reducer.run(
        batch_sizes=args.batch_size,
        methods=methods,
        patches=(vision.image_size // vision.patch_size) ** 2,
        channels=vision.hidden_size,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        dtype=DTYPES[args.dtype],
    )
    where = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print_results(
        rows,
        args.json,
        lambda: (
            f"PruMerge reducer on {where}, {args.dtype}, {rows[0]['patches']} patches x "
            f"{rows[0]['channels']} channels, {args.repeats} interleaved rounds (speed-up: median of the "
            "per-round ratios; best-of: fastest loop over fastest vectorised)\n"
            + bench_reducer.format_table(rows)
        ),
    )
    if args.plot:
        plot_rows(rows, REDUCER_PLOT_PANELS, args.plot, "PruMerge reducer: vectorised vs per-token loop")
    return rows


# ---------------------------------------------------------------------------------------------
# Command line


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from error
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}; use a comma-separated subset of {','.join(METHODS)}"
        )
    return methods


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        if not text.strip().lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH_OR_HUB_ID", help="a LLaVA or LLaVA-PruMerge checkpoint")
    source.add_argument(
        "--arch",
        choices=RANDOM_ARCHITECTURES,
        help="random weights: LLaVA-1.5 shapes (CLIP ViT-L/14-336 + Vicuna), or the tiny test model",
    )
    parser.add_argument(
        "--layers", type=_int_at_least(1), help="with --arch: build only this many LLM layers (real width)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument(
        "--batch-size", type=_positive_int_list, default=[1], help="comma-separated batch sizes (default 1)"
    )
    parser.add_argument(
        "--methods", type=_methods, default=list(METHODS), help="default: " + ",".join(METHODS)
    )
    parser.add_argument(
        "--text-tokens",
        type=_int_at_least(1),
        default=40,
        help="prompt tokens besides the image (default 40)",
    )
    parser.add_argument("--new-tokens", type=_int_at_least(0), default=8, help="decode steps (default 8)")
    parser.add_argument("--repeats", type=_int_at_least(1), default=3)
    parser.add_argument("--warmup", type=_int_at_least(0), default=1)
    parser.add_argument(
        "--threads",
        type=_int_at_least(1),
        help="CPU threads for torch (default: torch's); on a busy machine 1 avoids waiting on descheduled threads",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vision-only",
        action="store_true",
        help="vision tower and reducer only (large batches on slow machines)",
    )
    parser.add_argument(
        "--reducer-only", action="store_true", help="vectorised reducer vs the per-token loop, nothing else"
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="the result rows as JSON: printed instead of the tables, or written to PATH besides them",
    )
    parser.add_argument("--plot", metavar="PNG", help="write bar charts per method and batch size")


def main_from_args(args: argparse.Namespace) -> list[dict]:
    try:
        if args.layers is not None and args.model:
            raise ValueError("--layers applies to --arch (random weights), not to a --model checkpoint")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.reducer_only:
            return run_reducer_only(args)
        if not (args.model or args.arch):
            raise ValueError(
                "choose a checkpoint (--model) or random weights (--arch), or pass --reducer-only"
            )
        dtype, device = DTYPES[args.dtype], torch.device(args.device)
        if args.model:
            subject = load_checkpoint_subject(args.model, dtype, device)
        else:
            subject = build_random_subject(args.arch, args.layers, dtype, device, args.seed)
        rows = run_benchmark(
            subject,
            args.batch_size,
            args.methods,
            text_tokens=args.text_tokens,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            warmup=args.warmup,
            vision_only=args.vision_only,
            seed=args.seed,
        )
    except ValueError as error:
        raise SystemExit(f"llava-prumerge bench: error: {error}") from error
    print_results(rows, args.json, lambda: format_report(subject, rows))
    if args.plot:
        title = f"{subject.arch or subject.checkpoint}, {rows[0]['device']} {rows[0]['dtype']}, {subject.llm_layers} LLM layers"
        plot_rows(rows, BENCH_PLOT_PANELS, args.plot, title)
        print(f"wrote {args.plot}", file=sys.stderr)
    return rows
