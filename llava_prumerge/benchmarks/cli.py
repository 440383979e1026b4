"""The `bench` and `analyze` subcommands (arguments only; `bench` imports torch when it runs)."""

from __future__ import annotations

import argparse
import json
import sys

from ..common.cli_args import (
    COMPARED_METHODS,
    DTYPE_NAMES,
    compared_method_labels,
    int_at_least,
    positive_float,
    positive_int,
    positive_int_list,
)
from ..common.outputs import check_output_path
from ..errors import UsageError
from ..serving.cli import check_vllm_installed
from . import roofline
from .compiling import COMPILE_CHOICES

METHODS_HELP = "comma-separated; METHOD@TOKENS: a fixed budget per image or video (adaptive=False)"
VLLM_BUDGETS = [64, 128, 192]  # --engine vllm's default --budgets


# Serve's wording (llava_prumerge.serving.cli), which cannot be imported without vLLM's plugin around it.
def without_repeats(parse):
    """An argparse type: `parse`'s list with repeated values dropped (each would be measured again)."""

    def parse_once(text: str) -> list:
        return list(dict.fromkeys(parse(text)))

    return parse_once


method_labels = without_repeats(compared_method_labels)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        metavar="PATH_OR_HUB_ID",
        help="a LLaVA, LLaVA-NeXT, LLaVA-OneVision or Video-LLaVA checkpoint, stock or PruMerge",
    )
    source.add_argument(
        "--arch",
        choices=list(roofline.ARCHITECTURES),
        help="random weights: LLaVA-1.5 shapes (CLIP ViT-L/14-336 + Vicuna), LLaVA-NeXT-7B's (a 672x672 image as "
        "5 views of CLIP ViT-L/14-336 + Vicuna-7B), Video-LLaVA-7B's (8 frames through CLIP ViT-L/14 at 224 px + "
        "Vicuna-7B), or the tiny test models",
    )
    parser.add_argument(
        "--layers", type=positive_int, help="with --arch: build only this many LLM layers (real width)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument(
        "--batch-size", type=positive_int_list, default=[1], help="comma-separated batch sizes (default 1)"
    )
    parser.add_argument(
        "--methods",
        type=method_labels,
        help=f"{METHODS_HELP}; default: {','.join(COMPARED_METHODS)}, for Video-LLaVA's 8-frame videos also "
        + ",".join(roofline.VIDEO_LLAVA_PROMPT.fixed_budgets)
        + ", for LLaVA-NeXT's 672x672 images also "
        + ",".join(roofline.LLAVA_NEXT_PROMPT.fixed_budgets),
    )
    parser.add_argument(
        "--text-tokens",
        type=positive_int,
        default=40,
        help="prompt tokens besides the image or video (default 40)",
    )
    parser.add_argument("--new-tokens", type=int_at_least(0), default=8, help="decode steps (default 8)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--warmup", type=int_at_least(0), default=1)
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch (default: torch's); on a busy machine 1 avoids waiting on descheduled threads",
    )
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument(
        "--image-size",
        type=image_size,
        metavar="WxH",
        help="Qwen-VL (native resolution): the image's width and height in pixels (default 1280x720)",
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        help="torch.compile the vision path (tower and reducer) and the LLM: inductor, reduce-overhead (inductor "
        "with CUDA graphs), or a backend that only traces (aot_eager, eager); --warmup passes absorb compiling",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--vision-only",
        action="store_true",
        help="vision tower and reducer only (large batches on slow machines)",
    )
    scope.add_argument(
        "--reducer-only", action="store_true", help="vectorized reducer vs the per-token loop, nothing else"
    )
    scope.add_argument(
        "--whole-prefill",
        action="store_true",
        help="time to first token as one call of the model's forward (compiled whole with --compile; fixed "
        "budgets get prompts in the budget's layout), LLaVA-1.5 images",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="the result rows as JSON: printed instead of the tables, or written to PATH besides them",
    )
    parser.add_argument("--plot", metavar="PNG", help="write bar charts per method and batch size")
    parser.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="vllm: requests/s, tokens/s and TTFT of vLLM serving none vs fixed --budgets (needs vLLM)",
    )
    parser.add_argument(
        "--budgets",
        type=positive_int_list,
        help="with --engine vllm: PruMerge+ visual tokens per image to compare with none (default "
        + ",".join(map(str, VLLM_BUDGETS))
        + ")",
    )


def run_bench(args: argparse.Namespace) -> list[dict]:
    """Measured benchmark of LLaVA with all visual tokens ("none"), PruMerge and PruMerge+.

    Runs a checkpoint (--model: a local folder or a Hub id) or a named architecture with random
    weights (--arch; --layers N keeps the real width but builds only N LLM layers, so that a
    7B-shaped model fits a small machine). Per method and batch size, the median over --repeats
    passes (after --warmup passes; methods interleaved, so load drifts hit all of them alike) of:
    vision tower (encode_patches), reducer (reduce_patches), projector + compaction, LLM prefill
    (decoder layers with use_cache=True, then lm_head on the last position), time to first token
    (their sum), decode (--new-tokens greedy steps from the prefilled cache), visual tokens per image
    (and their share of the stock count), KV-cache bytes (from the cache tensors after prefill), peak
    memory, and their ratios to "none". The q/k work the reducer adds in the vision tower is timed on
    its own, and the stock vision path (all layers with output_hidden_states, as
    LlavaModel.get_image_features) is timed alongside.

    A LLaVA-NeXT (--arch llava-next-7b or tiny-next, or such a checkpoint) is measured on images of its
    largest square grid resolution (672x672 for llava-v1.6: the base view and 2x2 crops, 5 views through
    the tower as one batch, encode_views), each view reduced with its own [CLS] attention and laid out
    as the model lays them out; tokens per image count the image_newline tokens, the stock count is
    LlavaNextProcessor's (2928 for 672x672), and the field's fixed budgets (prumerge_plus@160, 320, 640
    for the whole image) are compared too.

    A Video-LLaVA (--arch video-llava-7b or tiny-video, or such a checkpoint) is measured on 8-frame
    videos instead: the frames go through the video tower as a batch (encode_video_frames) and are
    reduced like images, each keeping its [CLS] token, so tokens are counted per video; the paper's
    fixed video budgets (prumerge@256 and prumerge_plus@512 for 224 px frames) are compared too.
    METHOD@TOKENS in --methods fixes a budget (adaptive=False) per image or per video.

    Inputs are made in code: synthetic images (or clips of moving shapes) through the image
    processor, and the prompt a stock processor would produce (`<image>` expanded to image_seq_length
    placeholders, `<video>` to video_seq_length) with --text-tokens random text ids. Preprocessing is
    not timed. Fields named estimated_* are not measured: they scale the measured per-layer prefill
    time (and KV cache) to the architecture's full depth.

    --reducer-only times the vectorized reducer against a per-token loop with the published
    reducer's structure.
    """
    import torch

    if args.layers is not None and args.model:
        raise UsageError("--layers applies to --arch (random weights), not to a --model checkpoint")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    check_output_path(args.plot, "--plot")
    check_output_path(None if args.json == "-" else args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile and (args.reducer_only or args.engine == "vllm"):
        raise UsageError("--compile applies to --engine transformers (vLLM compiles by its own settings)")
    if args.compile and args.warmup < 1:
        raise UsageError(
            "--compile needs --warmup 1 or more: the first pass compiles, and is not a measurement"
        )
    check_bench_options(args)
    if args.reducer_only:
        from .reducer import run_from_args

        return run_from_args(args)
    if args.engine == "vllm":
        from ..serving.vllm_bench import run_from_args

        args.budgets = args.budgets or VLLM_BUDGETS
        return run_from_args(args)
    if not (args.model or args.arch):
        raise UsageError("choose a checkpoint (--model) or random weights (--arch), or pass --reducer-only")

    from ..common.loading import DTYPES
    from .measure import run_benchmark
    from .models import build_random_subject, load_checkpoint_subject
    from .prefill import format_prefill_report, run_whole_prefill
    from .report import BENCH_PLOT_PANELS, format_report, plot_rows, print_results

    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    if args.model:
        subject = load_checkpoint_subject(args.model, dtype, device, args.image_size)
    else:
        subject = build_random_subject(args.arch, args.layers, dtype, device, args.seed, args.image_size)
    methods = args.methods or list(subject.visual.prompt.methods)
    if args.whole_prefill:
        rows = run_whole_prefill(
            subject,
            args.batch_size,
            methods,
            args.text_tokens,
            args.repeats,
            args.warmup,
            args.seed,
            args.compile,
        )
        print_results(rows, args.json, lambda: format_prefill_report(subject, rows))
        return rows
    rows = run_benchmark(
        subject,
        args.batch_size,
        methods,
        text_tokens=args.text_tokens,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        vision_only=args.vision_only,
        seed=args.seed,
        compile_choice=args.compile,
    )
    print_results(rows, args.json, lambda: format_report(subject, rows))
    if args.plot:
        title = f"{subject.arch or subject.checkpoint}, {rows[0]['device']} {rows[0]['dtype']}, {subject.llm_layers} LLM layers"
        plot_rows(rows, BENCH_PLOT_PANELS, args.plot, title)
        print(f"wrote {args.plot}", file=sys.stderr)
    return rows


def check_bench_options(args: argparse.Namespace) -> None:
    """Refuse options this run would ignore, and an engine that is not installed, before anything loads."""
    if args.budgets is not None and args.engine != "vllm":
        raise UsageError(
            "--budgets applies to --engine vllm; with transformers, pass METHOD@TOKENS in --methods"
        )
    if args.image_size is not None:
        check_image_size_applies(args)
    if args.whole_prefill and args.plot:
        raise UsageError(
            "--plot draws the times of the stages; --whole-prefill times the forward as one call"
        )
    if args.whole_prefill and args.compile and args.warmup < 2:
        raise UsageError(
            "--whole-prefill --compile needs --warmup 2 or more: the methods share the compiled forward, and "
            "the frames an adaptive method's graph breaks resume in compile again on the second pass"
        )
    if args.engine == "vllm":
        if args.vision_only or args.whole_prefill or args.plot:
            raise UsageError(
                "--vision-only, --whole-prefill and --plot apply to --engine transformers; vLLM measures whole "
                "requests"
            )
        check_vllm_installed("--engine vllm")


def check_image_size_applies(args: argparse.Namespace) -> None:
    """--image-size sets a Qwen-VL model's native resolution; every other model resizes to its tower's size."""
    if args.reducer_only:
        raise UsageError("--image-size applies to whole-model runs, not to --reducer-only: drop one of them")
    if args.model:
        from ..architectures import architecture_for
        from ..common.loading import prumerge_config  # the config only: no weights load

        qwen = architecture_for(prumerge_config(args.model).model_type).name.startswith("qwen")
    else:
        qwen = args.arch in roofline.QWEN_IMAGE_SIZES
    if not qwen:
        raise UsageError(
            f"--image-size applies to Qwen-VL models (native resolution); {args.model or args.arch} resizes "
            "every image to its tower's size: drop --image-size"
        )


def image_size(text: str) -> tuple[int, int]:
    """'WxH' -> (height, width) in pixels."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT in pixels (e.g. 1280x720)")
    return int(height), int(width)


def _architecture(text: str) -> roofline.Architecture:
    try:
        return roofline.load_architecture(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--arch: ")) from error


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        type=_architecture,
        default="llava-1.5-7b",
        help=f"{', '.join(roofline.ARCHITECTURES)}, or a folder with a LLaVA, LLaVA-NeXT, LLaVA-OneVision or Video-LLaVA config.json "
        "(default llava-1.5-7b)",
    )
    parser.add_argument("--hardware", choices=list(roofline.HARDWARE), default="v100", help="(default v100)")
    parser.add_argument(
        "--visual-tokens",
        type=positive_int,
        help="visual tokens per image or video without reduction (default: the architecture's, 576 for LLaVA-1.5, "
        "2928 for LLaVA-NeXT's 672x672 image, 7371 for LLaVA-OneVision's 1152x1152 one, 2056 for Video-LLaVA's 8 "
        "frames)",
    )
    parser.add_argument(
        "--text-tokens",
        type=positive_int,
        default=roofline.DEFAULT_TEXT_TOKENS,
        help=f"prompt tokens besides the image or video (default {roofline.DEFAULT_TEXT_TOKENS}: the paper's "
        "calibration)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1)
    for name, what in (("w", "weights"), ("a", "activations"), ("kv", "the KV cache")):
        parser.add_argument(
            f"--{name}-bits", type=int, choices=roofline.BIT_WIDTHS, default=16, help=f"bits of {what}"
        )
    parser.add_argument(
        "--methods",
        type=method_labels,
        help=f"{METHODS_HELP}; default: {','.join(COMPARED_METHODS)}, for Video-LLaVA also "
        + ",".join(roofline.VIDEO_LLAVA_PROMPT.fixed_budgets)
        + ", for LLaVA-NeXT also "
        + ",".join(roofline.LLAVA_NEXT_PROMPT.fixed_budgets),
    )
    parser.add_argument(
        "--prumerge-tokens",
        type=positive_int,
        help=f"adaptive PruMerge's tokens (default {roofline.PRUMERGE_TOKENS}: the paper's mean; Video-LLaVA: "
        f"{roofline.VIDEO_LLAVA_PROMPT.prumerge_tokens}, LLaVA-NeXT: {roofline.LLAVA_NEXT_PROMPT.prumerge_tokens}, "
        f"LLaVA-OneVision: {roofline.LLAVA_ONEVISION_PROMPT.prumerge_tokens}, the same share of each frame's or "
        "view's patches)",
    )
    parser.add_argument(
        "--prumerge-plus-tokens",
        type=positive_int,
        help=f"adaptive PruMerge+'s tokens (default {roofline.PRUMERGE_PLUS_TOKENS}: 25%%; Video-LLaVA: "
        f"{roofline.VIDEO_LLAVA_PROMPT.prumerge_plus_tokens}, LLaVA-NeXT: "
        f"{roofline.LLAVA_NEXT_PROMPT.prumerge_plus_tokens}, LLaVA-OneVision: "
        f"{roofline.LLAVA_ONEVISION_PROMPT.prumerge_plus_tokens}, the same share of each frame's or view's patches)",
    )
    parser.add_argument(
        "--peak", type=positive_float, metavar="TFLOPS", help="replace the selected peak (FP16 or INT8)"
    )
    parser.add_argument(
        "--bandwidth", type=positive_float, metavar="GB/s", help="replace the hardware's memory bandwidth"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_analyze(args: argparse.Namespace) -> list[dict]:  # its --help description: the roofline module's
    try:
        rows = roofline.analyze(
            arch=args.arch,
            hardware=args.hardware,
            visual_tokens=args.visual_tokens,
            text_tokens=args.text_tokens,
            batch_size=args.batch_size,
            w_bits=args.w_bits,
            a_bits=args.a_bits,
            kv_bits=args.kv_bits,
            methods=args.methods,
            prumerge_tokens=args.prumerge_tokens,
            prumerge_plus_tokens=args.prumerge_plus_tokens,
            peak_tflops=args.peak,
            bandwidth_gbps=args.bandwidth,
        )
    except ValueError as error:  # e.g. --prumerge-tokens above --visual-tokens
        raise UsageError(str(error)) from error
    print(json.dumps(rows, indent=2) if args.json else roofline.format_table(rows))
    return rows


run_analyze.__doc__ = roofline.__doc__
