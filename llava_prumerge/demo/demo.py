"""The `llava-prumerge demo` run: every method on each image, timed, drawn and answered (see `demo.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from matplotlib.figure import Figure
from transformers import BatchFeature

from ..benchmarks.modalities import VisualPath, visual_path
from ..common.cli_args import COMPARED_METHODS
from ..common.timing import NOISY_SPREAD, StageTime, timed, torch_threads
from ..errors import MissingInputError, UsageError
from ..evaluation.scoring import normalize_answer
from ..mini import SHIPPED_MINI_MODELS
from ..modeling.compaction import CompactedBatch
from ..modeling.token_reduction import ReducedTokens
from ..modeling.vision_encoding import EncodedPatches
from .cli import DRAWN_METHODS, SAMPLES
from .media import load_image
from .visualize import (
    TINY_MODEL_NOTE,
    draw,
    drawn_settings,
    importance_label,
    is_qwen_vl,
    load_model,
    patch_reduction,
    picture_title,
)
from .visualize_next import draw_anyres, is_anyres, reduce_anyres_image
from .visualize_qwen import draw_qwen, reduce_qwen_image

MINI, TINY = "mini", "tiny"  # --model names of the models built in the package (and SHIPPED_MINI_MODELS)
BUILT_IN_MODELS = (None, *SHIPPED_MINI_MODELS, TINY)  # None: the default, mini for images (tiny for videos)
MINI_MODEL_NOTE = "mini model trained here on synthetic Shapes-VQA (not CLIP, not the paper's weights)"
MINI_SIGLIP_MODEL_NOTE = "mini model with a SigLIP-architecture tower (no [CLS]) trained here on Shapes-VQA"
MINI_NOTICE = (
    "NOTE: no checkpoint given (--model), so this runs the mini LLaVA-PruMerge model shipped in the\n"
    "package: trained on this project's CPUs on Shapes-VQA, a synthetic task (colored circles, squares and\n"
    "triangles), with a small CLIP-architecture tower and a 4-layer Llama trained from scratch. Its\n"
    "[CLS] attention is learned, so the pictures show real selections; it knows nothing but this task, and\n"
    "these are not the paper's weights. Its timings are those of a toy."
)
RANDOM_WEIGHTS_NOTICE = (
    "NOTE: --model tiny runs a tiny LLaVA-shaped model built on this machine with RANDOM weights and\n"
    "14x14 patches: its token selections show how PruMerge works, its answers are gibberish."
)
# The question kinds the default demo asks, one Shapes-VQA test image each: color is PruMerge's best case,
# counting its worst (a count needs a token on every object; adaptive PruMerge keeps the strongest few).
DEMO_QUESTION_KINDS = ("color", "count", "position")


@dataclass
class DemoImage:
    """One image of the demo and what is asked about it."""

    path: Path
    image: object  # PIL image
    prompt: str
    expected: str | None = None  # the right answer, when known (Shapes-VQA)
    kind: str | None = None  # the question's kind, when known (Shapes-VQA: color, count, ...)


def check_image_checkpoint(name: str | None) -> None:
    """The image demo runs LLaVA-1.5 checkpoints; another family is refused before anything loads, with
    the command that shows its reduction."""
    if name in BUILT_IN_MODELS:
        return
    from ..common.loading import prumerge_config

    model_type = prumerge_config(name).model_type
    if model_type == "video_llava_prumerge":
        raise UsageError(
            f"{name} is a Video-LLaVA checkpoint: run the video demo, `demo --video --model {name}`"
        )
    if model_type != "llava_prumerge":
        raise UsageError(
            f"demo runs LLaVA-1.5 checkpoints, and {name} holds a {model_type!r} model: see its reduction with "
            f"`llava-prumerge visualize IMAGE --model {name}`"
        )


def load_demo_model(name: str | None):
    """(model, processor, description): the shipped mini model (None or "mini"), the tiny random-weight
    model ("tiny"), or a checkpoint folder / Hub id."""
    if name is None or name in SHIPPED_MINI_MODELS:
        from ..mini.model import load_shipped_mini

        model, processor = load_shipped_mini(name or MINI)
        note = MINI_MODEL_NOTE if name in (None, MINI) else MINI_SIGLIP_MODEL_NOTE
        return model, processor, note
    if name == TINY:
        model, processor = load_model(None)
        return model, processor, TINY_MODEL_NOTE
    model, processor = load_model(name)
    return model, processor, name


def shapes_vqa_images(out: Path) -> list[DemoImage]:
    """The first Shapes-VQA test images, saved into `out`/images, each asked a question of the next kind
    in DEMO_QUESTION_KINDS (its first question where it has none of that kind)."""
    from ..evaluation.shapes_vqa import examples

    (out / "images").mkdir(parents=True, exist_ok=True)
    chosen = []
    for kind, example in zip(DEMO_QUESTION_KINDS, examples("test", len(DEMO_QUESTION_KINDS)), strict=True):
        path = out / "images" / example.image_name
        example.image.save(path)
        of_kind = [question for question in example.questions if question.question_type == kind]
        question = (of_kind or example.questions)[0]
        chosen.append(
            DemoImage(path, example.image, question.question, question.answer, question.question_type)
        )
    return chosen


def demo_images(args: argparse.Namespace) -> list[DemoImage]:
    """--image files with --prompt; else Shapes-VQA test images for the mini model, the samples otherwise."""
    if args.image is None and (args.model is None or args.model in SHIPPED_MINI_MODELS):
        return shapes_vqa_images(args.out)
    image_paths = args.image or sorted(SAMPLES.glob("*.png"))
    if not image_paths:
        raise MissingInputError(
            f"No sample images in {SAMPLES}; reinstall llava-prumerge or pass --image PATH"
        )
    check_distinct_names(image_paths, "Images")
    return [DemoImage(path, load_image(path), args.prompt) for path in image_paths]


@dataclass
class DemoRow:
    """One image reduced with one method."""

    image: str
    method: str
    visual_tokens: int  # reaching the language model, summary token included
    num_patches: int
    prompt_length: int  # the compacted prompt the LLM prefills
    vision_ms: StageTime
    reducer_ms: StageTime
    prefill_ms: StageTime
    answer: str
    picture: Path | None
    question: str = ""
    expected: str | None = None  # the right answer, when known
    kind: str | None = None  # the question's kind, when known

    @property
    def right(self) -> bool | None:
        """Whether the answer is the expected one (None when no answer is known)."""
        return None if self.expected is None else normalize_answer(self.answer) == self.expected

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
    vision_ms: StageTime
    reducer_ms: StageTime
    prefill_ms: StageTime


def run(args: argparse.Namespace) -> list[DemoRow]:
    if args.model in BUILT_IN_MODELS:
        print(RANDOM_WEIGHTS_NOTICE if args.model == TINY else MINI_NOTICE)
    check_image_checkpoint(args.model)
    images = {item.path: item for item in demo_images(args)}  # first: a bad path fails before loading
    print(f"Loading {args.model or 'the mini model'} ...", flush=True)
    model, processor, description = load_demo_model(args.model)
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_every_method(
        images,
        lambda item, path, method: run_one(model, processor, pipe, item, method, args, description),
        args,
    )
    write_summary(summary_table(rows, args, model.device, description), rows, args.out)
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
    # The built-in models' operations are too small to share out between CPU threads: on a busy machine
    # the hand-offs cost a hundred times the work and would make their timings noise.
    with torch_threads(1) if args.model in BUILT_IN_MODELS else contextlib.nullcontext():
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


def time_stages(inner, path: VisualPath, pixel_values, settings, inputs, repeats: int) -> TimedStages:
    """Time `path`'s encode and reduce stages (as `bench` runs them) on `pixel_values` under the reducer
    `settings`, and the LLM prefill over the prompt `inputs` compacted with the reduced tokens, each the
    median of `repeats` runs after a warm-up."""
    encoded, vision_ms = timed(lambda: path.encode(inner, pixel_values, settings), repeats)
    reduced, reducer_ms = timed(lambda: path.reduce(inner, encoded, settings), repeats)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    compact = inner.compact_inputs(
        input_ids,
        attention_mask,
        position_ids=path.prompt_positions(inner, input_ids, attention_mask),
        visual=[path.tokens(inner, reduced)],
    )
    _, prefill_ms = timed(
        lambda: inner.language_model(
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            position_ids=compact.position_ids,
        ),
        repeats,
    )
    return TimedStages(encoded, reduced, compact, vision_ms, reducer_ms, prefill_ms)


@dataclass
class MeasuredImage:
    """One image under one reducer setting: its timed stages, the reduction's picture (when drawn), the answer."""

    stages: TimedStages
    figure: Figure | None
    answer: str
    stock_tokens: int  # the image's placeholders: what the stock model feeds the LLM
    visual_tokens: int  # the image's tokens in the prompt the LLM prefilled, which replaced them


def image_visual_path(model, image, inputs) -> VisualPath:
    """The model's `bench` path (`visual_path`) for this real image rather than bench's synthetic one: an
    AnyRes path of the image's size, a Qwen-VL path with the grid the processor gave it (`inputs`)."""
    return visual_path(model, (image.height, image.width)).for_image(image.height, image.width, inputs)


def image_inputs(model, processor, image, prompt: str):
    """The prompt's ids and the image's pixels on the model's device, as the model's processor builds them
    (Qwen-VL's from its parts: its processor needs torchvision)."""
    if is_qwen_vl(model):
        inputs = qwen_image_inputs(model, processor, image, prompt)
    else:
        inputs = processor(images=image, text=chat_prompt(processor, prompt), return_tensors="pt")
    return inputs.to(model.device)


def qwen_image_inputs(model, processor, image, prompt: str) -> BatchFeature:
    """What Qwen-VL's processor gives for one image and prompt, built from its parts (`load_model`'s: the
    processor itself needs torchvision): the chat template's one image placeholder repeated once per merged
    token of the image's grid."""
    pixels = processor.image_processor(images=image, return_tensors="pt")
    merged_tokens = int(pixels["image_grid_thw"].prod()) // model.config.vision_config.spatial_merge_size**2
    tokenizer = processor.tokenizer
    text = tokenizer.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=False)
    placeholder = tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    text = text.replace(placeholder, placeholder * merged_tokens)
    return BatchFeature({**tokenizer(text, return_tensors="pt"), **pixels})


def measure_image(
    model, processor, pipe, image, prompt: str, settings, repeats: int, max_new_tokens: int, title: str | None
) -> MeasuredImage:
    """Time the three stages on one image under the reducer `settings` (a LLaVA-1.5, LLaVA-NeXT,
    LLaVA-OneVision or Qwen-VL model), draw the reduction as `visualize` does when a `title` is given, and
    answer through the image-text-to-text `pipe` (`model.generate` where there is none: Qwen-VL's processor
    parts cannot build one). Shared by `demo` and `app`."""
    inputs = image_inputs(model, processor, image, prompt)
    pixel_values = inputs["pixel_values"].to(model.dtype)
    path = image_visual_path(model, image, inputs)
    with torch.inference_mode():
        stages = time_stages(model.model, path, pixel_values, settings, inputs, repeats)
        figure = None
        if title is not None:
            figure = draw_image(model, processor, image, pixel_values, settings, stages, title)
        if pipe is None:
            answer = generated_answer(model, processor.tokenizer, inputs, settings, max_new_tokens)
        else:
            answer = pipeline_answer(pipe, image, prompt, settings, max_new_tokens)
    input_ids = inputs["input_ids"]
    stock_tokens = int((input_ids == model.config.image_token_id).sum())
    text_tokens = input_ids.shape[1] - stock_tokens
    return MeasuredImage(
        stages, figure, answer, stock_tokens, stages.compact.attention_mask.shape[1] - text_tokens
    )


def draw_image(model, processor, image, pixel_values, settings, stages: TimedStages, title: str) -> Figure:
    """The reduction `stages` timed, as `visualize` draws it: per view for AnyRes, per merged token for Qwen-VL
    (both reduced again by `visualize`'s own functions), per patch otherwise."""
    if is_anyres(model):
        return draw_anyres(
            reduce_anyres_image(model, processor, image, settings.token_reduction, settings), title
        )
    if is_qwen_vl(model):
        return draw_qwen(
            reduce_qwen_image(model, processor, image, settings.token_reduction, settings), title
        )
    score = importance_label(model, settings)
    reduction = patch_reduction(
        settings, processor, pixel_values, stages.encoded.attention[0], stages.reduced, score
    )
    return draw(reduction, title)


def pipeline_answer(pipe, image, prompt: str, settings, max_new_tokens: int) -> str:
    """The greedy answer of the image-text-to-text `pipe` to `prompt` about `image`, under the reducer
    `settings`."""
    generated = pipe(
        text=chat_messages(prompt, image),
        return_full_text=False,
        generate_kwargs={"max_new_tokens": max_new_tokens, "do_sample": False, "reduction": settings},
    )
    return generated[0]["generated_text"]


def generated_answer(model, tokenizer, inputs, settings, max_new_tokens: int) -> str:
    """The greedy answer `model.generate` gives to the processor's `inputs`, under the reducer `settings`."""
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, reduction=settings)
    return tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def run_one(
    model, processor, pipe, item: DemoImage, method: str, args: argparse.Namespace, description: str
) -> DemoRow:
    """Time the three stages on one image with one method, draw the reduction, generate an answer."""
    path = item.path
    title = picture_title(path.name, method, description) if method in DRAWN_METHODS else None
    settings = drawn_settings(model, method)
    measured = measure_image(
        model, processor, pipe, item.image, item.prompt, settings, args.repeats, args.max_new_tokens, title
    )
    picture = None
    if measured.figure is not None:
        picture = args.out / f"{path.stem}-{method}.png"
        measured.figure.savefig(picture)
    stages = measured.stages
    return DemoRow(
        image=path.name,
        method=method,
        visual_tokens=stages.reduced.num_tokens[0],
        num_patches=stages.encoded.features.shape[1],
        prompt_length=stages.compact.inputs_embeds.shape[1],
        vision_ms=stages.vision_ms,
        reducer_ms=stages.reducer_ms,
        prefill_ms=stages.prefill_ms,
        answer=measured.answer,
        picture=picture,
        question=item.prompt,
        expected=item.expected,
        kind=item.kind,
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


def summary_table(
    rows: list[DemoRow], args: argparse.Namespace, device: torch.device, description: str
) -> str:
    questions = list(dict.fromkeys(row.question for row in rows))
    asked = f"prompt: {questions[0]!r}" if len(questions) == 1 else "prompts: each image's question (below)"
    lines = [
        "# PruMerge demo",
        "",
        f"- model: {description}",
        f"- {asked}; answers: greedy, at most {args.max_new_tokens} new tokens",
        times_note(device, args.repeats, "visual"),
        "",
        "| image | method | visual tokens | compression | prompt length | vision tower ms | reducer ms "
        "| LLM prefill ms | answer | picture |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        answer = one_line(row.answer)
        if row.expected is not None:
            answer += f" ({'right' if row.right else 'wrong'}: {row.expected})"
        lines.append(
            f"| {row.image} | {row.method} | {row.visual_tokens} / {row.num_patches} | {row.compression:.1f}x "
            f"| {row.prompt_length} | {row.vision_ms.cell()} | {row.reducer_ms.cell()} | {row.prefill_ms.cell()} "
            f"| {answer} | {picture_link(row.picture)} |"
        )
    if len(questions) > 1:
        lines += ["", "Questions:", ""]
        lines += [
            f"- {row.image}{f' ({row.kind})' if row.kind else ''}: {row.question}"
            for row in rows
            if row.method == COMPARED_METHODS[0]
        ]
    return "\n".join(lines + answer_notes(rows)) + "\n"


def answer_notes(rows: list[DemoRow]) -> list[str]:
    """Where the answers are known: each method's right answers, and what the reducing methods got wrong
    that "none" got right (a count, most often: PruMerge keeps too few tokens to see every object)."""
    scored = [row for row in rows if row.right is not None]
    if not scored:
        return []
    methods = list(dict.fromkeys(row.method for row in scored))
    tally = ", ".join(
        f"{method} {sum(row.right for row in scored if row.method == method)}/"
        f"{sum(row.method == method for row in scored)}"
        for method in methods
    )
    lines = ["", f"Right answers: {tally}."]
    right_without = {row.image for row in scored if row.method == "none" and row.right}
    lost = [row for row in scored if row.method != "none" and not row.right and row.image in right_without]
    for row in lost:
        lines.append(
            f"- {row.method} got the {row.kind or 'question'} of {row.image} wrong ({one_line(row.answer)!r}, "
            f"right: {row.expected!r}) with {row.visual_tokens} of {row.num_patches} tokens"
        )
    if any(row.kind == "count" for row in lost):
        lines.append(
            "- Counting is PruMerge's weak spot: a count needs a token on every object, and adaptive PruMerge "
            "keeps only the few patches whose [CLS] attention stands out; PruMerge+ adds spatial samples for "
            "that. `llava-prumerge eval` measures it per question type on the whole test split."
        )
    return lines


def times_note(device, repeats: int, tokens: str) -> str:
    """The summary's line on how the times were taken and when not to trust one."""
    return (
        f"- times on {device}: median of {repeats} runs after a warm-up; LLM prefill = the language model's "
        f"forward over the compacted prompt (text + {tokens} tokens); (noisy): the runs spread over more than "
        f"{NOISY_SPREAD:.0%} of the median (a busy machine, or a stage too short to time): do not compare it"
    )


def picture_link(picture: Path | None) -> str:
    """A Markdown link to a picture beside summary.md (none for `none`, which keeps every patch)."""
    return f"[{picture.name}]({picture.name})" if picture else "-"
