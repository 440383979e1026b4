"""The `llava-prumerge demo --video` run: every method on each video, timed, drawn and answered (see `demo.cli`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..benchmarks.modalities import VideoPath
from ..common.timing import StageTime
from ..common.video_processing import placeholders_per_frame
from .cli import DRAWN_METHODS
from .demo import (
    TimedStages,
    check_distinct_names,
    generated_answer,
    one_line,
    picture_link,
    run_every_method,
    time_stages,
    times_note,
    write_summary,
)
from .media import VIDEO_FRAMES, SampledVideo, load_video
from .visualize import drawn_settings, picture_title
from .visualize_video import (
    TINY_VIDEO_MODEL_NOTE,
    draw_video,
    load_video_model,
    preprocessing_note,
    video_inputs,
    video_reduction,
)

RANDOM_WEIGHTS_NOTICE = (
    "NOTE: no checkpoint given (--model), so this runs a tiny Video-LLaVA-shaped model built on this machine\n"
    "with RANDOM weights and 14x14 patches per frame: its token selections show how PruMerge works, its\n"
    "answers are gibberish and its timings are those of a toy."
)


@dataclass
class VideoDemoRow:
    """One video reduced with one method."""

    video: str
    method: str
    video_tokens: int  # reaching the language model: every frame's [CLS], kept and summary tokens
    stock_tokens: int  # what stock Video-LLaVA feeds it: frames x (patches + [CLS])
    frame_tokens: list[int]  # per frame, its share of video_tokens
    prompt_length: int  # the compacted prompt the LLM prefills
    vision_ms: StageTime
    reducer_ms: StageTime
    prefill_ms: StageTime
    answer: str
    picture: Path | None

    @property
    def compression(self) -> float:
        return self.stock_tokens / self.video_tokens

    @property
    def progress(self) -> str:
        return f"{self.video_tokens} of {self.stock_tokens} video tokens"


def run(args: argparse.Namespace) -> list[VideoDemoRow]:
    check_distinct_names(args.video, "Videos")
    videos = {path: load_video(path, VIDEO_FRAMES) for path in args.video}
    if args.model is None:
        print(RANDOM_WEIGHTS_NOTICE)
    print(f"Loading {args.model or 'the tiny Video-LLaVA model'} ...", flush=True)
    model, processor = load_video_model(args.model)
    if note := preprocessing_note(processor):
        print(note)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_every_method(
        videos, lambda video, path, method: run_one(model, processor, video, path, method, args), args
    )
    stock_frame = placeholders_per_frame(model.config.vision_config)
    write_summary(summary_table(rows, args, model.device, stock_frame), rows, args.out)
    return rows


@dataclass
class MeasuredVideo:
    """One video under one reducer setting: its timed stages, the reduction's picture (when drawn), the answer."""

    stages: TimedStages
    figure: Figure | None
    answer: str


def measure_video(
    model,
    processor,
    video: SampledVideo,
    prompt: str,
    settings,
    repeats: int,
    max_new_tokens: int,
    title: str | None,
) -> MeasuredVideo:
    """Time the three stages on one video under the reducer `settings`, draw the reduction when a `title` is
    given, and generate an answer (shared by `demo --video` and `app`)."""
    inputs = video_inputs(model, processor, video, prompt)
    pixel_values_videos = inputs["pixel_values_videos"]
    path = VideoPath(pixel_values_videos.shape[1], placeholders_per_frame(model.config.vision_config) - 1)
    with torch.inference_mode():
        stages = time_stages(model.model, path, pixel_values_videos, settings, inputs, repeats)
        figure = None
        if title is not None:
            reduction = video_reduction(
                settings, processor, pixel_values_videos, stages.encoded, stages.reduced, video
            )
            figure = draw_video(reduction, title)
        answer = generated_answer(model, processor.tokenizer, inputs, settings, max_new_tokens)
    return MeasuredVideo(stages, figure, answer)


def run_one(model, processor, video: SampledVideo, path: Path, method: str, args) -> VideoDemoRow:
    """Time the three stages on one video with one method, draw the reduction, generate an answer."""
    title = None
    if method in DRAWN_METHODS:
        title = picture_title(path.name, method, args.model or TINY_VIDEO_MODEL_NOTE)
    settings = drawn_settings(model, method)
    measured = measure_video(
        model, processor, video, args.prompt, settings, args.repeats, args.max_new_tokens, title
    )
    picture = None
    if measured.figure is not None:
        picture = args.out / f"{path.stem}-{method}.png"
        measured.figure.savefig(picture)
    stages = measured.stages
    return VideoDemoRow(
        video=path.name,
        method=method,
        video_tokens=sum(stages.reduced.num_tokens),
        stock_tokens=len(video.frames) * placeholders_per_frame(model.config.vision_config),
        frame_tokens=stages.reduced.num_tokens,
        prompt_length=stages.compact.inputs_embeds.shape[1],
        vision_ms=stages.vision_ms,
        reducer_ms=stages.reducer_ms,
        prefill_ms=stages.prefill_ms,
        answer=measured.answer,
        picture=picture,
    )


def summary_table(
    rows: list[VideoDemoRow], args: argparse.Namespace, device: torch.device, stock_frame: int
) -> str:
    lines = [
        "# PruMerge demo: videos",
        "",
        f"- model: {args.model or TINY_VIDEO_MODEL_NOTE}",
        f"- prompt: {args.prompt!r}; answers: greedy, at most {args.max_new_tokens} new tokens",
        f"- frames: {VIDEO_FRAMES} per video, evenly spaced from the first to the last, as Video-LLaVA samples "
        f"them; stock Video-LLaVA feeds the LLM each frame's [CLS] token and all its patches ({stock_frame} "
        "tokens a frame), PruMerge each frame's [CLS] token and its reduced tokens",
        times_note(device, args.repeats, "video"),
        "",
        "| video | method | video tokens / stock | compression | tokens per frame | prompt length "
        "| vision tower ms | reducer ms | LLM prefill ms | answer | picture |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.video} | {row.method} | {row.video_tokens} / {row.stock_tokens} | {row.compression:.1f}x "
            f"| {' '.join(map(str, row.frame_tokens))} | {row.prompt_length} | {row.vision_ms.cell()} "
            f"| {row.reducer_ms.cell()} | {row.prefill_ms.cell()} | {one_line(row.answer)} | {picture_link(row.picture)} |"
        )
    return "\n".join(lines) + "\n"
