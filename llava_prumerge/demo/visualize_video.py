"""What PruMerge did to a video's frames, as data and as a picture (see `llava-prumerge visualize --video`).

Video-LLaVA reduces every sampled frame like an image, with its own [CLS] attention, and feeds the
LLM each frame's [CLS] token then its reduced tokens. The picture puts each frame's patch picture
(as `visualize` draws an image) above its [CLS] attention histogram, four frames a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from transformers import BatchFeature

from ..common.loading import prumerge_config
from ..common.video_processing import (
    VideoFramesProcessor,
    load_video_processor,
    loaded_or_reason,
    processor_for_videos,
)
from ..errors import UsageError
from ..modeling.frames import frame_settings
from ..modeling.reduction_settings import ReductionSettings
from ..modeling.token_reduction import ReducedTokens
from ..modeling.vision_encoding import EncodedPatches
from ..testing.tiny_video import (
    tiny_video_image_processor,
    tiny_video_model,
    tiny_video_processor,
    tiny_video_tokenizer,
)
from .media import SampledVideo
from .visualize import (
    DPI,
    PatchReduction,
    add_patch_legend,
    demo_device,
    draw_attention_histogram,
    draw_patch_marks,
    drawn_settings,
    load_checkpoint,
    patch_counts,
    patch_legend_handles,
    patch_reduction,
)

# Video-LLaVA's conversation format, as its model card prompts it
VIDEO_PROMPT_FORMAT = "USER: <video>\n{prompt} ASSISTANT:"
FRAME_COLUMNS = 4
FRAME_INCHES = (4.0, 5.0)  # one frame's patch picture and histogram
TITLE_INCHES = 1.4  # the title above the frames and the legend below them
TINY_VIDEO_MODEL_NOTE = (
    "tiny random-weight Video-LLaVA: the selection shows the mechanics, not a trained CLIP's choices"
)


# ---------------------------------------------------------------- the model and its frame processing


def load_video_model(name_or_path: str | None = None):
    """(model, processor) for videos: the tiny random-weight Video-LLaVA when `name_or_path` is None, else a
    Video-LLaVA checkpoint (PruMerge, or stock and turned into PruMerge on load); see `processor_for_videos`."""
    if name_or_path is not None:
        model_type = prumerge_config(name_or_path).model_type
        if model_type != "video_llava_prumerge":
            raise UsageError(
                f"{name_or_path} holds a {model_type!r} model, not Video-LLaVA; for videos pass a Video-LLaVA "
                "checkpoint (stock or PruMerge), or pass images instead"
            )
        return load_checkpoint(name_or_path), load_video_processor(name_or_path)
    tokenizer = tiny_video_tokenizer()
    model = tiny_video_model(tokenizer=tokenizer).to(demo_device())
    processor, reason = loaded_or_reason(lambda: tiny_video_processor(tokenizer))
    vision_config = model.config.vision_config
    return model, processor_for_videos(
        processor, reason, tiny_video_image_processor(), tokenizer, vision_config
    )


def preprocessing_note(processor) -> str | None:
    """The line the commands print when frames go through the image processor, saying why."""
    if not isinstance(processor, VideoFramesProcessor):
        return None
    return (
        "NOTE: frames go through the image processor (the same resize, crop and normalization as the "
        f"video processor), because the video processor is not available: {processor.reason}"
    )


# ---------------------------------------------------------------- what happened to each frame


@dataclass
class VideoReduction:
    """What the video picture shows: each sampled frame's reduction, and where the frames come from."""

    frames: list[PatchReduction]  # num_tokens counts the frame's [CLS] token
    frame_numbers: list[int]  # each frame's index in the source
    total_frames: int  # frames in the source

    @property
    def num_tokens(self) -> int:
        """Tokens reaching the LLM: every frame's [CLS] token, kept tokens and summary token."""
        return sum(frame.num_tokens for frame in self.frames)

    @property
    def stock_tokens(self) -> int:
        """What stock Video-LLaVA feeds the LLM: frames x (patches + [CLS])."""
        return len(self.frames) * (len(self.frames[0].roles) + 1)


def frame_tokens(reduced: ReducedTokens, frame: int) -> ReducedTokens:
    """One frame's part of the reducer's output (the frames of a video are its items)."""
    window = slice(frame, frame + 1)
    return ReducedTokens(reduced.features[window], reduced.centers[window], reduced.neighbors[window])


def video_reduction(
    settings: ReductionSettings,
    processor,
    pixel_values_videos: torch.Tensor,
    encoded: EncodedPatches,
    reduced: ReducedTokens,
    video: SampledVideo,
) -> VideoReduction:
    """The picture's data from one video's reducer inputs and output, under the reducer `settings` used
    (each frame with its frame position's settings, as the model reduces it)."""
    per_frame = frame_settings(settings, len(video.frames))
    frames = [
        patch_reduction(
            per_frame[frame],
            processor,
            pixel_values_videos[0, frame : frame + 1],
            encoded.attention[frame],
            frame_tokens(reduced, frame),
        )
        for frame in range(len(video.frames))
    ]
    return VideoReduction(frames, video.frame_numbers, video.total_frames)


def video_inputs(model, processor, video: SampledVideo, prompt: str) -> BatchFeature:
    """The processor's inputs for one video and prompt, on the model's device, pixels in its dtype."""
    text = VIDEO_PROMPT_FORMAT.format(prompt=prompt)
    inputs = processor(text=text, videos=[video.frames], return_tensors="pt").to(model.device)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    return inputs


@torch.inference_mode()
def reduce_video(model, processor, video: SampledVideo, token_reduction: str) -> VideoReduction:
    """Run the video tower and the reducer on one video's frames and collect what the picture shows."""
    # transformers 4.57's VideoLlavaProcessor takes no videos without a text
    pixel_values_videos = video_inputs(model, processor, video, prompt="")["pixel_values_videos"]
    settings = drawn_settings(model, token_reduction)
    encoded = model.model.encode_video_frames(pixel_values_videos, reduction=settings)
    reduced = model.model.reduce_video_frames(encoded, len(video.frames), reduction=settings)
    return video_reduction(settings, processor, pixel_values_videos, encoded, reduced, video)


# ---------------------------------------------------------------- the picture (pure)


def panel_inches(rows: int, columns: int) -> tuple[float, float]:
    """A picture of `rows` x `columns` panels (each a patch picture above its histogram), title and legend."""
    return FRAME_INCHES[0] * columns, FRAME_INCHES[1] * rows + TITLE_INCHES


def video_figure_inches(num_frames: int) -> tuple[float, float]:
    columns = min(FRAME_COLUMNS, num_frames)
    return panel_inches(math.ceil(num_frames / columns), columns)


def draw_panels(
    panels: list[PatchReduction], titles: list[str], cells: list[tuple[int, int]], title: str
) -> Figure:
    """Each panel's patch picture above its attention histogram, at its (row, column) cell, one legend for
    all (no pyplot state). Shared by the video picture (a panel a frame) and the AnyRes one (a panel a view)."""
    rows, columns = 1 + max(row for row, _ in cells), 1 + max(column for _, column in cells)
    width, height = panel_inches(rows, columns)
    counts = [patch_counts(panel) for panel in panels]
    totals = {kind: sum(panel_counts[kind] for panel_counts in counts) for kind in counts[0]}
    legend_columns = 3 if columns >= 4 else 2  # a narrower picture stacks the legend in two columns
    legend_rows = math.ceil(len(patch_legend_handles(totals)) / legend_columns)
    figure = Figure(figsize=(width, height), dpi=DPI)
    layout = figure.add_gridspec(
        2 * rows, columns, height_ratios=[1, 0.32] * rows, hspace=0.22, wspace=0.25,
        top=1 - 0.8 / height, bottom=(0.25 + 0.17 * legend_rows) / height, left=0.03, right=0.98,
    )  # fmt: skip
    for panel, panel_title, (row, column) in zip(panels, titles, cells, strict=True):
        patches_axes = figure.add_subplot(layout[2 * row, column])
        draw_patch_marks(patches_axes, panel)
        patches_axes.set_title(panel_title, fontsize=9)
        histogram_axes = figure.add_subplot(layout[2 * row + 1, column])
        draw_attention_histogram(histogram_axes, panel, fontsize=6, histtype="stepfilled")
        histogram_axes.tick_params(labelsize=6)
    add_patch_legend(figure, totals, loc="lower center", ncol=legend_columns)
    figure.suptitle(title, fontsize=10)
    return figure


def draw_video(reduction: VideoReduction, title: str) -> Figure:
    """Each frame's patch picture above its attention histogram, four frames a row (see `draw_panels`)."""
    num_frames = len(reduction.frames)
    columns = min(FRAME_COLUMNS, num_frames)
    titles = [
        f"frame {number + 1} of {reduction.total_frames}: {frame.num_tokens} tokens"
        for number, frame in zip(reduction.frame_numbers, reduction.frames, strict=True)
    ]
    return draw_panels(
        reduction.frames,
        titles,
        [divmod(index, columns) for index in range(num_frames)],
        f"{title}\n{reduction.num_tokens} video tokens reach the LLM (each frame's [CLS] token, kept tokens and "
        f"summary token); stock Video-LLaVA: {num_frames} x ({len(reduction.frames[0].roles)} patches + [CLS]) "
        f"= {reduction.stock_tokens}",
    )
