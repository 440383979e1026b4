"""The `llava-prumerge demo` run: every method on each image, timed, drawn and answered (see `demo.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from ..common.cli_args import COMPARED_METHODS
from ..common.timing import timed, torch_threads
from ..errors import MissingInputError, UsageError
from ..modeling.compaction import CompactedBatch
from ..modeling.token_reduction import ReducedTokens
from ..modeling.vision_encoding import EncodedPatches
from .cli import DRAWN_METHODS, SAMPLES
from .media import load_image
from .visualize import TINY_MODEL_NOTE, draw, drawn_settings, load_model, patch_reduction, picture_title

RANDOM_WEIGHTS_NOTICE = (
    "NOTE: no checkpoint given (--model), so this runs a tiny LLaVA-shaped model built on this machine with\n"
    "RANDOM weights and 14x14 patches: its token selections show how PruMerge works, its answers are\n"
    "gibberish and its timings are those of a toy."
)


@dataclass
class DemoRow:
    """One image reduced with one method."""

    image: str
    method: str
    visual_tokens: int  # reaching the language model, summary token included
    num_patches: int
    prompt_length: int  # the compacted prompt the LLM prefills
    vision_ms: float
    reducer_ms: float
    prefill_ms: float
    answer: str
    picture: Path | None

    @property
    def compression(self) -> float:
        return self.num_patches / self.visual_tokens

    @property
    def progress(self) -> str:
        return f"{self.visual_tokens} visual tokens"


@dataclass
class TimedStages:
    """The three stages of one input with one method, their outputs and their median times."""

    encoded: EncodedPatches  # the vision tower's
    reduced: ReducedTokens  # the reducer's
    compact: CompactedBatch  # the prompt the LLM prefills
    vision_ms: float
    reducer_ms: float
    prefill_ms: float


def run(args: argparse.Namespace) -> list[DemoRow]:
    image_paths = args.image or sorted(SAMPLES.glob("*.png"))
    if not image_paths:
        raise MissingInputError(
            f"No sample images in {SAMPLES}; reinstall llava-prumerge or pass --image PATH"
        )
    check_distinct_names(image_paths, "Images")
    images = {path: load_image(path) for path in image_paths}
    if args.model is None:
        print(RANDOM_WEIGHTS_NOTICE)
    print(f"Loading {args.model or 'the tiny model'} ...", flush=True)
    model, processor = load_model(args.model)
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_every_method(
        images, lambda image, path, method: run_one(model, processor, pipe, image, path, method, args), args
    )
    write_summary(summary_table(rows, args, model.device), rows, args.out)
    return rows


def check_distinct_names(paths: list[Path], noun: str) -> None:
    """Pictures are named after their inputs' file names, so two inputs may not share one."""
    names = [path.name for path in paths]
    if len(set(names)) < len(names):
        raise UsageError(
            f"{noun} share a file name ({names}); their pictures would overwrite each other: rename one"
        )


def run_every_method(inputs: dict[Path, object], run_one, args: argparse.Namespace) -> list:
    """`run_one(input, path, method)` for every input and method in order, one progress line each."""
    rows = []
    steps = [(path, method) for path in inputs for method in COMPARED_METHODS]
    # The tiny model's operations are too small to share out between CPU threads: on a busy machine
    # the hand-offs cost a hundred times the work and would make its timings noise.
    with torch_threads(1) if args.model is None else contextlib.nullcontext():
        for step, (path, method) in enumerate(steps, 1):
            print(f"[{step}/{len(steps)}] {path.name} · {method} ...", end=" ", flush=True)
            start = time.perf_counter()
            row = run_one(inputs[path], path, method)
            rows.append(row)
            print(f"{row.progress} ({time.perf_counter() - start:.1f} s)", flush=True)
    return rows


def write_summary(summary: str, rows: list, out: Path) -> None:
    (out / "summary.md").write_text(summary)
    print()
    print(summary)
    print(f"Pictures: {', '.join(str(row.picture) for row in rows if row.picture)}")
    print(f"Summary:  {out / 'summary.md'}")


def time_stages(inner, encode, reduce, visual_tokens, inputs, repeats: int) -> TimedStages:
    """Time `encode()`, `reduce(encoded)` and the LLM prefill over the prompt compacted with
    `visual_tokens(reduced)`, each the median of `repeats` runs after a warm-up."""
    encoded, vision_ms = timed(encode, repeats)
    reduced, reducer_ms = timed(lambda: reduce(encoded), repeats)
    visual = [visual_tokens(reduced)]
    compact = inner.compact_inputs(inputs["input_ids"], inputs["attention_mask"], visual=visual)
    _, prefill_ms = timed(
        lambda: inner.language_model(
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            position_ids=compact.position_ids,
        ),
        repeats,
    )
    return TimedStages(encoded, reduced, compact, vision_ms, reducer_ms, prefill_ms)


def run_one(model, processor, pipe, image, path: Path, method: str, args: argparse.Namespace) -> DemoRow:
    """Time the three stages on one image with one method, draw the reduction, generate an answer."""
    inputs = processor(images=image, text=chat_prompt(processor, args.prompt), return_tensors="pt")
    inputs = inputs.to(model.device)
    pixel_values = inputs["pixel_values"].to(model.dtype)
    inner = model.model
    settings = drawn_settings(model, method)
    with torch.inference_mode():
        stages = time_stages(
            inner,
            lambda: inner.encode_patches(pixel_values, reduction=settings),
            lambda encoded: inner.reduce_patches(encoded, reduction=settings),
            inner.image_tokens,
            inputs,
            args.repeats,
        )
        picture = None
        if method in DRAWN_METHODS:
            reduction = patch_reduction(
                settings, processor, pixel_values, stages.encoded.attention[0], stages.reduced
            )
            picture = args.out / f"{path.stem}-{method}.png"
            draw(reduction, picture_title(path.name, method, args.model)).savefig(picture)
        messages = chat_messages(args.prompt, image)
        generated = pipe(
            text=messages,
            return_full_text=False,
            generate_kwargs={
                "max_new_tokens": args.max_new_tokens,
                "do_sample": False,
                "reduction": settings,
            },
        )
    return DemoRow(
        image=path.name,
        method=method,
        visual_tokens=stages.reduced.num_tokens[0],
        num_patches=stages.encoded.features.shape[1],
        prompt_length=stages.compact.inputs_embeds.shape[1],
        vision_ms=stages.vision_ms,
        reducer_ms=stages.reducer_ms,
        prefill_ms=stages.prefill_ms,
        answer=generated[0]["generated_text"],
        picture=picture,
    )


def chat_messages(prompt: str, image=None) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
    ]


def chat_prompt(processor, prompt: str) -> str:
    return processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True)


def one_line(text: str, width: int = 48) -> str:
    """The answer as one table cell: control characters dropped, `|` escaped, cut to `width`."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = (text if len(text) <= width else text[: width - 1] + "…") or "(nothing printable)"
    return text.replace("|", "\\|")


def summary_table(rows: list[DemoRow], args: argparse.Namespace, device: torch.device) -> str:
    lines = [
        "# PruMerge demo",
        "",
        f"- model: {args.model or TINY_MODEL_NOTE}",
        f"- prompt: {args.prompt!r}; answers: greedy, at most {args.max_new_tokens} new tokens",
        f"- times on {device}: median of {args.repeats} runs after a warm-up; LLM prefill = the language "
        "model's forward over the compacted prompt (text + visual tokens)",
        "",
        "| image | method | visual tokens | compression | prompt length | vision tower ms | reducer ms "
        "| LLM prefill ms | answer | picture |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.image} | {row.method} | {row.visual_tokens} / {row.num_patches} | {row.compression:.1f}x "
            f"| {row.prompt_length} | {row.vision_ms:.1f} | {row.reducer_ms:.1f} | {row.prefill_ms:.1f} "
            f"| {one_line(row.answer)} | {picture_link(row.picture)} |"
        )
    return "\n".join(lines) + "\n"


def picture_link(picture: Path | None) -> str:
    """A Markdown link to a picture beside summary.md (none for `none`, which keeps every patch)."""
    return f"[{picture.name}]({picture.name})" if picture else "-"
