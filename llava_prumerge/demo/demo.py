"""See what PruMerge does, on this machine, with nothing to download.

By default the demo runs a tiny LLaVA-shaped model built here with random weights on the sample
images shipped in llava_prumerge/samples/ (a plain sky with one sign, a page of text, a cluttered
scene). For each image and each method (none, prumerge, prumerge_plus) it reports the visual tokens
the language model gets, the compression, the time spent in the vision tower, the reducer and the
LLM prefill, and the answer generated through the image-text-to-text pipeline; it draws what the
reducer did to each image (see `llava-prumerge visualize`) and writes a summary table.

llava-prumerge demo --out prumerge-demo
llava-prumerge demo --model llava-hf/llava-1.5-7b-hf --image photo.jpg   # a real checkpoint
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from .visualize import (
    DRAWN_METHODS,
    TINY_MODEL_NOTE,
    draw,
    load_image,
    load_model,
    patch_reduction,
    picture_title,
    reducer_settings,
)

SAMPLES = Path(__file__).parent / "samples"
METHODS = ("none", "prumerge", "prumerge_plus")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("prumerge-demo"), help="folder for pictures and summary"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR_OR_REPO",
        help="a PruMerge or stock LLaVA-1.5 checkpoint (folder or Hub id); default: the tiny random-weight model",
    )
    parser.add_argument(
        "--image",
        action="append",
        type=Path,
        default=None,
        metavar="PATH",
        help="an image of yours (repeat for several); default: the shipped samples",
    )
    parser.add_argument("--prompt", default="What is shown in this image?")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage, after one warm-up run")


def main_from_args(args: argparse.Namespace) -> list[DemoRow]:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    image_paths = args.image or sorted(SAMPLES.glob("*.png"))
    if not image_paths:
        raise FileNotFoundError(
            f"No sample images in {SAMPLES}; reinstall llava-prumerge or pass --image PATH"
        )
    names = [path.name for path in image_paths]
    if len(set(names)) < len(names):
        raise ValueError(
            f"Images share a file name ({names}); their pictures would overwrite each other: rename one"
        )
    images = {path: load_image(path) for path in image_paths}
    if args.model is None:
        print(RANDOM_WEIGHTS_NOTICE)
    print(f"Loading {args.model or 'the tiny model'} ...", flush=True)
    model, processor = load_model(args.model)
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    steps = [(path, method) for path in image_paths for method in METHODS]
    # The tiny model's operations are too small to share out between CPU threads: on a busy machine
    # the hand-offs cost a hundred times the work and would make its timings noise.
    with torch_threads(1) if args.model is None else contextlib.nullcontext():
        for step, (path, method) in enumerate(steps, 1):
            print(f"[{step}/{len(steps)}] {path.name} · {method} ...", end=" ", flush=True)
            start = time.perf_counter()
            row = run_one(model, processor, pipe, images[path], path, method, args)
            rows.append(row)
            print(f"{row.visual_tokens} visual tokens ({time.perf_counter() - start:.1f} s)", flush=True)

    summary = summary_table(rows, args, model.device)
    (args.out / "summary.md").write_text(summary)
    print()
    print(summary)
    print(f"Pictures: {', '.join(str(row.picture) for row in rows if row.picture)}")
    print(f"Summary:  {args.out / 'summary.md'}")
    return rows


def run_one(model, processor, pipe, image, path: Path, method: str, args: argparse.Namespace) -> DemoRow:
    """Time the three stages on one image with one method, draw the reduction, generate an answer."""
    inputs = processor(images=image, text=chat_prompt(processor, args.prompt), return_tensors="pt")
    inputs = inputs.to(model.device)
    pixel_values = inputs["pixel_values"].to(model.dtype)
    inner = model.model
    with reducer_settings(model, method), torch.inference_mode():
        encoded, vision_ms = timed(lambda: inner.encode_patches(pixel_values), args.repeats)
        reduced, reducer_ms = timed(lambda: inner.reduce_patches(encoded), args.repeats)
        compact = inner.compact_inputs(inputs["input_ids"], pixel_values, inputs["attention_mask"])
        _, prefill_ms = timed(
            lambda: inner.language_model(
                inputs_embeds=compact.inputs_embeds,
                attention_mask=compact.attention_mask,
                position_ids=compact.position_ids,
            ),
            args.repeats,
        )
        picture = None
        if method in DRAWN_METHODS:
            reduction = patch_reduction(model.config, processor, pixel_values, encoded.attention[0], reduced)
            picture = args.out / f"{path.stem}-{method}.png"
            draw(reduction, picture_title(path.name, method, args.model)).savefig(picture)
        messages = chat_messages(args.prompt, image)
        generated = pipe(
            text=messages,
            return_full_text=False,
            generate_kwargs={"max_new_tokens": args.max_new_tokens, "do_sample": False},
        )
    return DemoRow(
        image=path.name,
        method=method,
        visual_tokens=reduced.num_tokens[0],
        num_patches=encoded.features.shape[1],
        prompt_length=compact.inputs_embeds.shape[1],
        vision_ms=vision_ms,
        reducer_ms=reducer_ms,
        prefill_ms=prefill_ms,
        answer=generated[0]["generated_text"],
        picture=picture,
    )


def chat_messages(prompt: str, image=None) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
    ]


def chat_prompt(processor, prompt: str) -> str:
    return processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True)


def timed(run, repeats: int):
    """(result, median milliseconds over `repeats` runs after one warm-up), waiting for the GPU."""
    result = run()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        result = run()
        synchronize()
        times.append(time.perf_counter() - start)
    return result, 1000 * statistics.median(times)


@contextlib.contextmanager
def torch_threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


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
        "| LLM prefill ms | answer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.image} | {row.method} | {row.visual_tokens} / {row.num_patches} | {row.compression:.1f}x "
            f"| {row.prompt_length} | {row.vision_ms:.1f} | {row.reducer_ms:.1f} | {row.prefill_ms:.1f} "
            f"| {one_line(row.answer)} |"
        )
    return "\n".join(lines) + "\n"
