"""Reducer micro-benchmark (`llava-prumerge bench --reducer-only`): the vectorised reducer against the
per-token loop with the published reducer's structure, same inputs, same run."""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch

from ..common.cli_args import COMPARED_METHODS, split_method_label
from ..common.loading import DTYPES, prumerge_config
from ..common.timing import clock, counted
from ..errors import UsageError
from ..modeling.token_reduction import reduce_visual_tokens
from ..testing.reducer_loop import reduce_visual_tokens_loop
from .models import random_architecture
from .report import REDUCER_PLOT_PANELS, plot_rows, print_results

CPU = torch.device("cpu")


def realistic_inputs(batch: int, patches: int = 576, channels: int = 1024, outliers: int = 32, seed: int = 0):
    """CLIP-L/336-shaped inputs whose [CLS] attention has about `outliers` large values per image."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, patches, channels, generator=generator)
    keys = torch.randn(batch, patches, channels, generator=generator)
    logits = 0.5 * torch.randn(batch, patches, generator=generator)
    for image in range(batch):
        hot = torch.randperm(patches, generator=generator)[:outliers]
        logits[image, hot] += 5 + 2 * torch.rand(outliers, generator=generator)
    return features, logits.softmax(dim=-1), keys


def paired_seconds(
    vectorised, loop, rounds: int, warmup: int = 1, calls_per_round: int = 5, device: torch.device = CPU
):
    """Per-round times of both implementations, interleaved.

    Each round times the loop once and the vectorised reducer `calls_per_round` times (their median)
    back to back, so a busy moment of a shared machine slows both alike; a ratio taken per round
    is steadier than one taken between two separately timed series.
    """
    for _ in range(warmup):
        vectorised()
        loop()
    vectorised_times, loop_times = [], []
    for _ in range(rounds):
        vectorised_times.append(statistics.median(clock(vectorised, device) for _ in range(calls_per_round)))
        loop_times.append(clock(loop, device))
    return vectorised_times, loop_times


def run(
    batch_sizes=(1, 16),
    methods=("prumerge", "prumerge_plus"),
    patches=576,
    channels=1024,
    repeats=5,
    warmup=1,
    device="cpu",
    dtype=torch.float32,
):
    """One row per method and batch size: medians over `repeats` interleaved rounds, the median of
    the per-round speed-ups, and the best-of speed-up (fastest loop over fastest vectorised).
    The inputs are made in float32 on the CPU, then moved to `device` and cast to `dtype`."""
    device = torch.device(device)
    rows = []
    for method in methods:
        for batch in batch_sizes:
            inputs = [t.to(device, dtype) for t in realistic_inputs(batch, patches, channels)]
            with torch.no_grad():
                vectorised, loop = paired_seconds(
                    partial(reduce_visual_tokens, *inputs, token_reduction=method),
                    partial(reduce_visual_tokens_loop, *inputs, method),
                    repeats,
                    warmup,
                    device=device,
                )
                tokens = reduce_visual_tokens(*inputs, token_reduction=method).num_tokens
            rows.append(
                {
                    "method": method,
                    "device": device.type,
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch_size": batch,
                    "patches": patches,
                    "channels": channels,
                    "mean_tokens_per_image": sum(tokens) / len(tokens),
                    "vectorised_ms": statistics.median(vectorised) * 1e3,
                    "loop_ms": statistics.median(loop) * 1e3,
                    "speedup": statistics.median(lo / ve for lo, ve in zip(loop, vectorised, strict=True)),
                    "best_vectorised_ms": min(vectorised) * 1e3,
                    "best_loop_ms": min(loop) * 1e3,
                    "best_speedup": min(loop) / min(vectorised),
                }
            )
    return rows


def format_table(rows) -> str:
    lines = [
        f"{'method':<14} {'batch':>5} {'tokens/img':>10} {'vectorised ms':>14} {'loop ms':>10} "
        f"{'speed-up':>9} {'best-of':>8}",
    ]
    for row in rows:
        lines.append(
            f"{row['method']:<14} {row['batch_size']:>5} {row['mean_tokens_per_image']:>10.1f} "
            f"{row['vectorised_ms']:>14.2f} {row['loop_ms']:>10.2f} {row['speedup']:>8.1f}x "
            f"{row['best_speedup']:>7.1f}x"
        )
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> list[dict]:
    """The vectorised reducer against the per-token loop, at the vision tower's patch and feature shape."""
    labels = args.methods or list(COMPARED_METHODS)
    fixed = [label for label in labels if split_method_label(label)[1] is not None]
    if fixed:
        raise UsageError(f"--reducer-only times the adaptive methods; drop {','.join(fixed)} from --methods")
    methods = [m for m in labels if m != "none"]
    if not methods:
        raise UsageError("--reducer-only needs prumerge and/or prumerge_plus in --methods")
    # Shapes of the given checkpoint or architecture; LLaVA-1.5's (576 patches x 1024) by default.
    config = (
        prumerge_config(args.model) if args.model else random_architecture(args.arch or "llava-1.5-7b").config
    )
    vision = config.vision_config
    rows = run(
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
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({counted(torch.get_num_threads(), 'thread')})"
    )
    print_results(
        rows,
        args.json,
        lambda: (
            f"PruMerge reducer on {where}, {args.dtype}, {rows[0]['patches']} patches x "
            f"{rows[0]['channels']} channels, {args.repeats} interleaved rounds (speed-up: median of the "
            "per-round ratios; best-of: fastest loop over fastest vectorised)\n" + format_table(rows)
        ),
    )
    if args.plot:
        plot_rows(rows, REDUCER_PLOT_PANELS, args.plot, "PruMerge reducer: vectorised vs per-token loop")
    return rows
