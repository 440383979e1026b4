"""`bench --engine vllm`: vLLM serving one checkpoint with every visual token ("none") and with fixed budgets.

Every method serves the same Hub folder (the same weights); its reducer settings reach vLLM as
`hf_overrides`. The engines run in this process one after another (VLLM_ENABLE_V1_MULTIPROCESSING=0),
eager (no graph compilation), with prefix caching off, on the same prompts: each request has its own
synthetic image (new ones every repeat, so no cache holds an earlier image) and --text-tokens random
text tokens, given as token ids. Per method and --batch-size:
- prefill tokens per image: vLLM's prompt length minus the text tokens;
- throughput: --batch-size requests submitted at once (continuous batching), --new-tokens each
  (ignore_eos): requests/s, generated tokens/s and all tokens (prompt + generated) per second;
- TTFT: one request alone with max_tokens=1, from submitting it to its token (image preprocessing included);
medians of --repeats runs after --warmup (the JSON also has their ranges), and each method's ratios to
"none" from the same run.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from ..errors import UsageError
from .vllm_plugin import ARCHITECTURES as SERVED_ARCHITECTURES

# The table's columns: header, the row's field, width, format, suffix (the JSON has every field).
COLUMNS = (
    ("method", "method", 18, "s", ""),
    ("batch", "batch_size", 5, "d", ""),
    ("tokens/img", "prefill_tokens_per_image", 10, "d", ""),
    ("req/s", "requests_per_s", 8, ".3f", ""),
    ("x none", "requests_per_s_vs_none", 7, ".2f", "x"),
    ("gen tok/s", "generated_tokens_per_s", 9, ".1f", ""),
    ("all tok/s", "total_tokens_per_s", 9, ".1f", ""),
    ("TTFT ms", "ttft_ms", 9, ".1f", ""),
    ("x none", "ttft_speedup_vs_none", 7, ".2f", "x"),
    ("LLM-only req/s", "llm_only_requests_per_s", 14, ".3f", ""),
    ("x none", "llm_only_requests_per_s_vs_none", 7, ".2f", "x"),
)
# With fewer LLM layers than the real model: estimated full-depth throughput (not measured).
ESTIMATE_COLUMNS = (
    ("est. req/s", "estimated_full_depth_requests_per_s", 10, ".4f", ""),
    ("x none", "estimated_full_depth_requests_per_s_vs_none", 7, ".2f", "x"),
)
KV_CACHE_HEADROOM = 1.25  # vLLM allocates whole blocks


def compared_methods(token_reduction: str, budgets: list[int]) -> list[tuple[str, dict]]:
    """(label, hf_overrides) of "none" and of `token_reduction` at each fixed budget."""
    fixed = [
        (
            f"{token_reduction} {budget}",
            {"token_reduction": token_reduction, "adaptive": False, "num_visual_tokens": budget},
        )
        for budget in budgets
    ]
    return [("none", {"token_reduction": "none"}), *fixed]


def run_from_args(args) -> list[dict]:
    """`bench --engine vllm` (see the module docstring); prints the table or JSON and returns the rows."""
    from ..benchmarks.report import print_results
    from ..benchmarks.roofline import QWEN_IMAGE_SIZES

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # vLLM's CPU worker sizes its thread pool from it
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the results (--json -)
    with tempfile.TemporaryDirectory(prefix="prumerge-vllm-bench-") as scratch:
        folder, full_depth = (
            (args.model, None) if args.model else _random_weight_folder(args, Path(scratch) / "m")
        )
        rows = run_vllm_benchmark(
            str(folder), compared_methods("prumerge_plus", args.budgets), args.batch_size, args.dtype,
            text_tokens=args.text_tokens, new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup,
            seed=args.seed, full_depth_layers=full_depth, image_size=args.image_size or QWEN_IMAGE_SIZES.get(args.arch),
        )  # fmt: skip
    description = {"checkpoint": args.model, "arch": args.arch, "layers": args.layers}
    for row in rows:
        row.update(description)
    print_results(rows, args.json, lambda: format_report(rows, description))
    return rows


def _random_weight_folder(args, folder: Path) -> tuple[Path, int]:
    """A Hub folder of `bench`'s random-weight model of --arch (--layers; a tiny one with vLLM's head size, 32)
    and its LLM's full depth, with a tiny tokenizer of the family whose placeholder ids become the model's
    (text ids are drawn from it; random weights give them no meaning)."""
    import torch

    from ..benchmarks.models import build_random_subject
    from ..common.loading import DTYPES
    from ..hub_upload.export import save_hub_folder

    if not args.arch:
        raise UsageError("choose a checkpoint (--model) or random weights (--arch)")
    subject = build_random_subject(
        args.arch,
        args.layers,
        DTYPES[args.dtype],
        torch.device("cpu"),
        args.seed,
        args.image_size,
    )
    parts = _family_processor_parts(subject.model.config, subject.image_processor)
    folder = save_hub_folder(subject.model, parts, folder, model_card_extra={"license": "apache-2.0"})
    return folder, subject.full_depth_layers


def _family_processor_parts(config, image_processor):
    """The processor of a random-weight model as its parts: its image processor, and a tiny tokenizer of its
    family whose placeholder tokens become the config's ids (the full-size vocabulary holds them)."""
    from ..architectures import architecture_for
    from ..common.conversation import VICUNA_CHAT_TEMPLATE, vicuna_chat_template
    from ..hub_upload.compat import ProcessorParts
    from ..testing.tiny import tiny_tokenizer
    from ..testing.tiny_qwen import QWEN_IMAGE, QWEN_VIDEO, tiny_qwen_tokenizer
    from ..testing.tiny_video import tiny_video_tokenizer

    family = architecture_for(config.model_type).name
    vision = config.vision_config
    if family.startswith("qwen"):
        tokenizer = tiny_qwen_tokenizer()
        for name, token in (("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
                            ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>")):  # fmt: skip
            setattr(config, f"{name}_token_id", tokenizer.convert_tokens_to_ids(token))
        tokenizer.chat_template = vicuna_chat_template(QWEN_IMAGE, QWEN_VIDEO)
        return ProcessorParts(tokenizer, image_processor, chat_template=tokenizer.chat_template)
    if family == "llava-onevision":
        tokenizer = tiny_video_tokenizer()
        config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
        return ProcessorParts(
            tokenizer=tokenizer, image_processor=image_processor, vision_feature_select_strategy="full",
            video_token="<video>", chat_template=VICUNA_CHAT_TEMPLATE,
            num_image_tokens=(vision.image_size // vision.patch_size) ** 2, vision_aspect_ratio=config.vision_aspect_ratio,
        )  # fmt: skip
    tokenizer = tiny_tokenizer()
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return ProcessorParts(
        tokenizer=tokenizer, image_processor=image_processor, patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy, chat_template=VICUNA_CHAT_TEMPLATE,
    )  # fmt: skip


def run_vllm_benchmark(
    folder: str,
    methods: list[tuple[str, dict]],
    batch_sizes: list[int],
    dtype: str,
    *,
    text_tokens: int,
    new_tokens: int,
    repeats: int,
    warmup: int,
    seed: int,
    full_depth_layers: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[dict]:
    """One row per method and batch size (ratios to "none" included); each method's engine runs once, alone.
    full_depth_layers: the real model's LLM layers, when the folder has fewer (random weights, --layers);
    image_size: (height, width) of a native-resolution model's images (default `bench`'s)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    if (config.architectures or [None])[0] not in SERVED_ARCHITECTURES:
        raise UsageError(
            f"{folder} is not a PruMerge Hub folder vLLM serves ({', '.join(SERVED_ARCHITECTURES)}); write one "
            "with `llava-prumerge export`"
        )
    visual = _visual_path(config, image_size)
    prompts = PromptMaker(config, AutoTokenizer.from_pretrained(folder), text_tokens, seed, visual)
    max_model_len = text_tokens + visual.expanded_length(config) + new_tokens + 16
    rows = []
    for label, overrides in methods:
        llm = _engine(folder, overrides, dtype, max_model_len, max(batch_sizes), config)
        try:
            for batch_size in batch_sizes:
                rows.append(
                    {
                        "method": label,
                        **overrides,
                        **measure(llm, prompts, batch_size, new_tokens, repeats, warmup),
                    }
                )
        finally:
            del llm
            gc.collect()
    add_derived_fields(
        rows, config.text_config.num_hidden_layers, full_depth_layers or config.text_config.num_hidden_layers
    )
    from vllm import __version__ as vllm_version
    from vllm.platforms import current_platform

    for row in rows:
        row.update(text_tokens=text_tokens, new_tokens=new_tokens, repeats=repeats, dtype=dtype)
        row["engine"] = f"vLLM {vllm_version} ({current_platform.device_type})"
    return rows


def _visual_path(config, image_size: tuple[int, int] | None):
    """The images `bench` measures the folder's model on, and their placeholders (`benchmarks.modalities`),
    from a model built on the meta device (no weights)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from ..benchmarks.modalities import visual_path

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return visual_path(model, image_size)


def _engine(folder: str, overrides: dict, dtype: str, max_model_len: int, max_num_seqs: int, config):
    from vllm import LLM

    from .budget import takes_videos

    return LLM(
        model=folder,
        hf_overrides=overrides,
        dtype=dtype,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_memory_bytes=kv_cache_bytes(config, max_num_seqs * max_model_len, dtype),
        enforce_eager=True,
        enable_prefix_caching=False,
        limit_mm_per_prompt={"image": 1, **({"video": 0} if takes_videos(config) else {})},  # images only
        disable_log_stats=True,
        seed=0,
    )


def kv_cache_bytes(config, tokens: int, dtype: str) -> int:
    """Bytes of a KV cache holding `tokens` tokens of `config`'s language model, with headroom."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = (
        2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * (4 if dtype == "float32" else 2)
    )
    return int(tokens * per_token * KV_CACHE_HEADROOM) + 2**24


class PromptMaker:
    """Requests as vLLM token prompts of random text ids: with bos, one image's placeholder (vLLM expands it to
    the method's count) and an image of the measured size, or text alone of a given length."""

    def __init__(self, config, tokenizer, text_tokens: int, seed: int, visual):
        import torch

        self.placeholder_ids = visual.prompt_ids(config)
        excluded = {*tokenizer.all_special_ids, *self.placeholder_ids}
        self.pool = torch.tensor([i for i in range(len(tokenizer)) if i not in excluded])
        self.bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        self.image_pixels = visual.image_pixels(config)  # (width, height)
        self.text_tokens = text_tokens
        self.seed = seed
        self.round = 0

    def _fresh_text(self, count: int, length: int) -> tuple[int, list[list[int]]]:
        """A seed never used before in this run, and `count` token lists of `length` random text ids."""
        import torch

        seed = self.seed + 1000 * self.round
        self.round += 1
        generator = torch.Generator().manual_seed(seed)
        ids = self.pool[torch.randint(len(self.pool), (count, length), generator=generator)]
        return seed, ids.tolist()

    def image_requests(self, count: int) -> list[dict]:
        """`count` requests with images and text never used before in this run (no cache can hold them)."""
        from ..benchmarks.modalities import synthetic_images

        seed, texts = self._fresh_text(count, self.text_tokens - len(self.bos))
        width, height = self.image_pixels
        images = [
            image.resize((width, height)) for image in synthetic_images(count, max(width, height), seed)
        ]
        return [
            {
                "prompt_token_ids": [*self.bos, *self.placeholder_ids, *text],
                "multi_modal_data": {"image": image},
            }
            for text, image in zip(texts, images, strict=True)
        ]

    def image_tokens(self, prompt_length: int) -> int:
        """The tokens an image request's prompt spends on its image (its placeholders as vLLM expanded them)."""
        return prompt_length - self.text_tokens - (len(self.placeholder_ids) - 1)

    def text_requests(self, count: int, length: int) -> list[dict]:
        """`count` text-only requests of `length` tokens: the language model's share of an image request."""
        _, texts = self._fresh_text(count, length - len(self.bos))
        return [{"prompt_token_ids": [*self.bos, *text]} for text in texts]


def _timed_generate(llm, requests: list[dict], params) -> tuple[float, list]:
    started = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - started, outputs


def measure(llm, prompts: PromptMaker, batch_size: int, new_tokens: int, repeats: int, warmup: int) -> dict:
    """Medians of `repeats` runs: `batch_size` concurrent image requests, as many text-only requests of the same
    length (the language model alone), and one image request alone with max_tokens=1 (TTFT)."""
    from vllm import SamplingParams

    decode = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True, detokenize=False)
    first_token = SamplingParams(max_tokens=1, temperature=0, detokenize=False)
    image_runs, text_runs, ttfts = [], [], []
    for index in range(warmup + repeats):
        seconds, outputs = _timed_generate(llm, prompts.image_requests(batch_size), decode)
        prompt_length = len(outputs[0].prompt_token_ids)
        text_seconds, _ = _timed_generate(llm, prompts.text_requests(batch_size, prompt_length), decode)
        ttft, _ = _timed_generate(llm, prompts.image_requests(1), first_token)
        if index >= warmup:
            image_runs.append((seconds, outputs))
            text_runs.append(text_seconds)
            ttfts.append(ttft)
    seconds = statistics.median(run[0] for run in image_runs)
    fastest, slowest = min(run[0] for run in image_runs), max(run[0] for run in image_runs)
    outputs = image_runs[0][1]
    prompt_tokens = [len(output.prompt_token_ids) for output in outputs]
    generated = sum(len(output.outputs[0].token_ids) for output in outputs)
    return {
        "batch_size": batch_size,
        "prefill_tokens_per_image": prompts.image_tokens(prompt_tokens[0]),
        "prompt_tokens": prompt_tokens[0],
        "throughput_s": seconds,
        "requests_per_s": batch_size / seconds,
        "requests_per_s_range": [batch_size / slowest, batch_size / fastest],  # the spread of the repeats
        "generated_tokens_per_s": generated / seconds,
        "total_tokens_per_s": (sum(prompt_tokens) + generated) / seconds,
        "llm_only_throughput_s": statistics.median(text_runs),
        "ttft_ms": statistics.median(ttfts) * 1e3,
        "ttft_ms_range": [min(ttfts) * 1e3, max(ttfts) * 1e3],
        "threads": _engine_threads(),
    }


def _engine_threads() -> int:
    """OpenMP threads the CPU engine runs with (it binds OMP_NUM_THREADS or picks its own)."""
    import torch

    return torch.get_num_threads()


def add_derived_fields(rows: list[dict], layers: int, full_depth_layers: int) -> None:
    """Language-model-only throughput, the full-depth estimate (when fewer LLM layers were built) and every
    row's speed-ups over "none" at the same batch size (throughput: higher is better; TTFT: lower).

    The estimate keeps the time image requests take beyond text-only ones of the same length (vision
    tower, reducer, projector) and scales the text-only time by full_depth_layers / layers: not measured.
    """
    for row in rows:
        row["llm_only_requests_per_s"] = row["batch_size"] / row["llm_only_throughput_s"]
        row["layers_built"], row["full_depth_layers"] = layers, full_depth_layers
        if full_depth_layers > layers:
            vision_s = max(0.0, row["throughput_s"] - row["llm_only_throughput_s"])
            estimated_s = vision_s + row["llm_only_throughput_s"] * full_depth_layers / layers
            row["estimated_full_depth_requests_per_s"] = row["batch_size"] / estimated_s
    baselines = {row["batch_size"]: row for row in rows if row["method"] == "none"}
    for row in rows:
        none = baselines[row["batch_size"]]
        for field in (
            "requests_per_s",
            "total_tokens_per_s",
            "llm_only_requests_per_s",
            "estimated_full_depth_requests_per_s",
        ):
            if field in row:
                row[f"{field}_vs_none"] = row[field] / none[field]
        row["ttft_speedup_vs_none"] = none["ttft_ms"] / row["ttft_ms"]


def format_report(rows: list[dict], description: dict) -> str:
    first = rows[0]
    source = (
        description["checkpoint"]
        or f"{description['arch']} (random weights, {description['layers'] or 'all'} LLM layers)"
    )
    columns = COLUMNS + (ESTIMATE_COLUMNS if "estimated_full_depth_requests_per_s" in first else ())
    lines = [
        f"{first['engine']} on {platform.machine()}, {first['threads']} threads, {first['dtype']}: {source}",
        f"{first['text_tokens']} text tokens + 1 image per request, {first['new_tokens']} generated tokens; "
        f"median of {first['repeats']} runs",
        "",
        _table_line(columns, [header for header, *_ in columns]),
    ]
    for row in rows:
        cells = [format(row[field], spec) + suffix for _, field, _, spec, suffix in columns]
        lines.append(_table_line(columns, cells))
    if len(columns) > len(COLUMNS):
        lines.append(
            f"est.: {first['full_depth_layers']} LLM layers instead of {first['layers_built']}, from the image and "
            "text-only runs (an estimate, not a measurement)"
        )
    return "\n".join(lines)


def _table_line(columns, cells: list[str]) -> str:
    """The first column left-aligned, the others right-aligned, to the columns' widths."""
    widths = [width for _, _, width, *_ in columns]
    return " ".join(
        cell.ljust(width) if index == 0 else cell.rjust(width)
        for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )
