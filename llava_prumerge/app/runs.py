"""What the app computes, as plain functions (no gradio, testable without a browser).

One upload (an image, or a video for a Video-LLaVA model) and one question are run with each chosen
method: the demo's timed stages and answer (`demo.measure_image`, `demo_video.measure_video`: the stages
`bench` times, for LLaVA-1.5, LLaVA-NeXT / LLaVA-OneVision AnyRes views, Qwen-VL merged tokens and
Video-LLaVA frames alike), the picture `visualize` draws, and the visual tokens that reached the language
model. Every bad input ends in one `PruMergeError` whose message the page shows as it is.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import transformers
from matplotlib.figure import Figure
from PIL import Image

from ..benchmarks.modalities import visual_path
from ..common.cli_args import COMPARED_METHODS, positive_int_list, split_method_label
from ..common.loading import prumerge_config
from ..common.timing import StageTime
from ..common.video_processing import placeholders_per_frame
from ..demo.cli import DEFAULT_IMAGE_QUESTION, DEFAULT_VIDEO_QUESTION, DRAWN_METHODS, SAMPLE_CLIP, SAMPLES
from ..demo.demo import BUILT_IN_MODELS, load_demo_model, measure_image
from ..demo.demo_video import measure_video
from ..demo.media import VIDEO_FRAMES, SampledVideo, load_image, load_video
from ..demo.visualize import drawn_settings, is_qwen_vl, picture_title
from ..demo.visualize_next import is_anyres
from ..demo.visualize_video import load_video_model
from ..errors import UsageError
from ..modeling.reduction_settings import ReductionSettings

REPEATS = 3  # timed runs per stage after a warm-up, as the demo's default
MAX_NEW_TOKENS = 20
# how a model sees its input: LLaVA-1.5 patches, AnyRes views, Qwen-VL merged tokens, Video-LLaVA frames
IMAGE, ANYRES, QWEN, VIDEO = "image", "anyres", "qwen", "video"


@dataclass
class AppModel:
    """The model the app runs, how it sees its input, and what the page calls it."""

    model: object
    processor: object
    kind: str  # IMAGE, ANYRES, QWEN or VIDEO
    description: str
    pipe: object | None = None  # the image-text-to-text pipeline (None: answered by `generate`)

    @property
    def default_question(self) -> str:
        return DEFAULT_VIDEO_QUESTION if self.kind == VIDEO else DEFAULT_IMAGE_QUESTION

    @property
    def samples(self) -> list[Path]:
        """The shipped inputs the page offers: the sample clip for a video model, the sample images otherwise."""
        return [SAMPLE_CLIP] if self.kind == VIDEO else sorted(SAMPLES.glob("*.png"))


def load_app_model(name: str | None) -> AppModel:
    """The shipped mini model (None), "mini-siglip", "tiny", or a LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision,
    Qwen2.5-VL, Qwen2-VL or Video-LLaVA checkpoint folder / Hub id; a wrong folder is refused before it
    loads."""
    model_type = None if name in BUILT_IN_MODELS else prumerge_config(name).model_type
    if model_type == "video_llava_prumerge":
        model, processor = load_video_model(name)
        return AppModel(model, processor, VIDEO, name)
    model, processor, description = load_demo_model(name)
    if is_qwen_vl(model):  # its processor comes as parts, which the pipeline cannot use
        return AppModel(model, processor, QWEN, description)
    kind = ANYRES if is_anyres(model) else IMAGE
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    return AppModel(model, processor, kind, description, pipe)


def method_labels(methods: list[str], budgets: str) -> list[str]:
    """The labels to run: the chosen `methods` as they are, then each reducing one at each fixed budget of
    `budgets` (comma-separated tokens, "" for none), e.g. ["none", "prumerge", "prumerge@16"]."""
    unknown = [method for method in methods if method not in COMPARED_METHODS]
    if unknown:
        raise UsageError(f"Unknown methods {unknown}; choose among {', '.join(COMPARED_METHODS)}")
    if not methods:
        raise UsageError("Choose at least one method")
    budget_values = []
    if budgets.strip():
        try:
            budget_values = positive_int_list(budgets.replace(" ", ""))
        except argparse.ArgumentTypeError:
            raise UsageError(
                f"Fixed budgets must be comma-separated positive token counts, e.g. 16,64; got {budgets!r}"
            ) from None
        if not set(methods) & set(DRAWN_METHODS):
            raise UsageError("A fixed budget applies to prumerge or prumerge_plus: choose one of them too")
    budgeted = [
        f"{method}@{budget}" for method in methods if method in DRAWN_METHODS for budget in budget_values
    ]
    return list(methods) + budgeted


def method_settings(app_model: AppModel, label: str) -> ReductionSettings:
    """The model's reducer settings with the label's method, and with "@TOKENS" that fixed budget per image
    (shared by an AnyRes image's views; per video for Video-LLaVA), as `bench` fixes it; tokens in attention
    order, as `visualize` draws them."""
    method, budget = split_method_label(label)
    settings = drawn_settings(app_model.model, method)
    if budget is None:
        return settings
    return settings.replace(adaptive=False, **{visual_path(app_model.model).budget_field: budget})


def load_upload(app_model: AppModel, path: str | Path | None) -> Image.Image | SampledVideo:
    """The uploaded (or sample) file as the model's input: an image, or a Video-LLaVA model's sampled
    frames; a missing, unreadable or oversized file is one `PruMergeError` naming what to upload."""
    if path is None:
        noun = "a video (animated GIF or MP4)" if app_model.kind == VIDEO else "an image"
        raise UsageError(f"Upload {noun} or pick a sample first")
    if app_model.kind == VIDEO:
        return load_video(path, VIDEO_FRAMES)
    return load_image(path)


def drawable(settings: ReductionSettings) -> bool:
    """Whether `visualize` draws a reduction under these settings: not for `none` (every patch is kept)."""
    return settings.token_reduction in DRAWN_METHODS


@dataclass
class MethodResult:
    """One method's run on the upload: what the page shows in its column and its table row."""

    label: str
    visual_tokens: int  # reaching the language model
    stock_tokens: int  # what the stock model feeds it
    answer: str
    figure: Figure | None  # the reduction, as `visualize` draws it (None: nothing to draw)
    vision_ms: StageTime
    reducer_ms: StageTime
    prefill_ms: StageTime


def run_method(app_model: AppModel, media, name: str, question: str, label: str) -> MethodResult:
    """Run one method on the image or video `media` (its file called `name`), asked `question`."""
    settings = method_settings(app_model, label)
    title = picture_title(name, label, app_model.description) if drawable(settings) else None
    if app_model.kind == VIDEO:
        measured = measure_video(
            app_model.model, app_model.processor, media, question, settings, REPEATS, MAX_NEW_TOKENS, title
        )
        stock = len(media.frames) * placeholders_per_frame(app_model.model.config.vision_config)
        return timed_result(label, sum(measured.stages.reduced.num_tokens), stock, measured)
    measured = measure_image(
        app_model.model,
        app_model.processor,
        app_model.pipe,
        media,
        question,
        settings,
        REPEATS,
        MAX_NEW_TOKENS,
        title,
    )
    return timed_result(label, measured.visual_tokens, measured.stock_tokens, measured)


def timed_result(label: str, visual_tokens: int, stock_tokens: int, measured) -> MethodResult:
    stages = measured.stages
    return MethodResult(
        label,
        visual_tokens,
        stock_tokens,
        measured.answer,
        measured.figure,
        stages.vision_ms,
        stages.reducer_ms,
        stages.prefill_ms,
    )


def run_methods(
    app_model: AppModel, path, question: str, methods: list[str], budgets: str
) -> tuple[Image.Image | SampledVideo, list[MethodResult]]:
    """Every chosen method on the file at `path`; bad input is refused before the first run."""
    labels = method_labels(methods, budgets)
    question = question.strip() or app_model.default_question
    placeholders = [token for token in ("<image>", "<video>") if token in question]
    if placeholders:
        raise UsageError(
            f"The question holds {', '.join(placeholders)}: the app puts the upload into the prompt itself; "
            "ask the question alone"
        )
    media = load_upload(app_model, path)
    for label in labels:
        method_settings(app_model, label)  # a refused label fails before any run
    return media, [run_method(app_model, media, Path(path).name, question, label) for label in labels]


def results_table(results: list[MethodResult]) -> str:
    """The results as a Markdown table, one row a method, in the order run."""
    lines = [
        "| method | visual tokens to the LLM | of stock | vision ms | reducer ms | LLM prefill ms | answer |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        answer = " ".join(result.answer.split()).replace("|", "\\|") or "(no answer)"
        lines.append(
            f"| {result.label} | {result.visual_tokens} | {result.stock_tokens} | {result.vision_ms.cell()} "
            f"| {result.reducer_ms.cell()} | {result.prefill_ms.cell()} | {answer} |"
        )
    return "\n".join(lines)


def figure_image(figure: Figure) -> Image.Image:
    """A drawn figure as an RGB image, for the page's gallery."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def result_pictures(results: list[MethodResult], media) -> list[tuple[Image.Image, str]]:
    """(picture, caption) per method, side by side in the page: its reduction, or the input itself where
    nothing is drawn (`none` keeps every patch); a video shows its first sampled frame."""
    shown = media.frames[0] if isinstance(media, SampledVideo) else media
    return [
        (
            figure_image(result.figure) if result.figure is not None else shown,
            f"{result.label}: {result.visual_tokens} of {result.stock_tokens} visual tokens",
        )
        for result in results
    ]
