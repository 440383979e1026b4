"""Video-LLaVA's processor where torchvision is missing: frames go through the image processor.

transformers' video processors need torchvision, and on a machine whose torchvision does not load
(none installed, or a CUDA build beside a CPU torch) `AutoProcessor` cannot build Video-LLaVA's
processor at all, for videos or images. `load_video_processor` returns the stock processor where it
builds, and otherwise `VideoFramesProcessor`: the same tokenizer and chat template, each video's frames
through the checkpoint's image processor (the same resize, center crop and normalization as the video
processor, by PIL instead of torchvision: within about one gray level), and each `<video>` expanded to
its frames' [CLS] and patch placeholders as `VideoLlavaProcessor` writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, BatchFeature
from transformers.utils import cached_file

from ..errors import UsageError

VIDEO_PLACEHOLDER = "<video>"


def placeholders_per_frame(vision_config) -> int:
    """What stock Video-LLaVA feeds the LLM per frame: its patches and its [CLS] token."""
    return (vision_config.image_size // vision_config.patch_size) ** 2 + 1


def frame_pixel_values(image_processor, frames: list) -> torch.Tensor:
    """[frames, 3, H, W] from an image processor, whatever it names them (Video-LLaVA's image processor
    pixel_values_images, CLIP's pixel_values)."""
    outputs = image_processor(images=frames, return_tensors="pt")
    (pixel_values,) = [value for name, value in outputs.items() if name.startswith("pixel_values")]
    return pixel_values


def _is_frame(item) -> bool:
    return isinstance(item, Image.Image) or (isinstance(item, np.ndarray | torch.Tensor) and item.ndim == 3)


def _frame_lists(videos) -> list[list]:
    """Videos as lists of frames: one video ([frames, H, W, 3] array or tensor, or a list of frames) or a
    list of them."""
    if isinstance(videos, np.ndarray | torch.Tensor):
        return [list(videos)] if videos.ndim == 4 else [list(video) for video in videos]
    videos = list(videos)
    if videos and _is_frame(videos[0]):
        return [videos]
    return [list(video) for video in videos]


@dataclass
class VideoFramesProcessor:
    """Video-LLaVA's processor for videos without torchvision (see the module docstring). Called as
    `VideoLlavaProcessor` is for videos: `processor(text=..., videos=..., return_tensors="pt")`."""

    image_processor: object
    tokenizer: object
    placeholders_per_frame: int  # the frame's patches and its [CLS] token
    reason: str  # why the stock processor is not used
    chat_template: str | None = None

    def __call__(self, *, text, videos=None, images=None, return_tensors="pt", padding=False) -> BatchFeature:
        if images is not None:
            raise UsageError(
                f"this processor takes videos only ({self.reason}); pass images through the image processor "
                "and the tokenizer, or install torchvision for the stock processor"
            )
        texts = [text] if isinstance(text, str) else list(text)
        frame_lists = _frame_lists(videos) if videos is not None else []
        placeholders = sum(prompt.count(VIDEO_PLACEHOLDER) for prompt in texts)
        if placeholders != len(frame_lists):
            raise UsageError(
                f"the text has {placeholders} {VIDEO_PLACEHOLDER} placeholder(s) for {len(frame_lists)} "
                "video(s); put one in the prompt per video"
            )
        if not frame_lists:
            return BatchFeature(dict(self.tokenizer(texts, return_tensors=return_tensors, padding=padding)))
        pixel_values = [frame_pixel_values(self.image_processor, frames) for frames in frame_lists]
        counts = {len(frames) for frames in pixel_values}
        if len(counts) > 1:
            raise UsageError(
                f"the videos have different numbers of frames ({sorted(counts)}); Video-LLaVA takes the "
                "videos of a batch with the same number (sample them alike)"
            )
        expanded, index = [], 0
        for prompt in texts:
            pieces = prompt.split(VIDEO_PLACEHOLDER)
            rebuilt = pieces[0]
            for piece in pieces[1:]:
                rebuilt += (
                    VIDEO_PLACEHOLDER * (len(pixel_values[index]) * self.placeholders_per_frame) + piece
                )
                index += 1
            expanded.append(rebuilt)
        inputs = self.tokenizer(expanded, return_tensors=return_tensors, padding=padding)
        return BatchFeature(
            {**inputs, "pixel_values_videos": torch.stack(pixel_values)}, tensor_type=return_tensors
        )

    def apply_chat_template(self, conversation, **kwargs) -> str:
        """The prompt of a chat, by the checkpoint's chat template (as the stock processor renders it)."""
        return self.tokenizer.apply_chat_template(
            conversation, chat_template=self.chat_template, tokenize=False, **kwargs
        )

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


def loaded_or_reason(load) -> tuple[object | None, str]:
    """(`load()`, "") or (None, why it failed) where it needs a library this Python lacks (torchvision)."""
    try:
        return load(), ""
    except ImportError as error:
        return None, " ".join(str(error).split()).split(". ")[0]  # its first sentence


def processor_for_videos(
    processor, reason: str, image_processor, tokenizer, vision_config, chat_template=None
):
    """`processor` when it has a video processor; else a `VideoFramesProcessor`, the reason kept for the
    note the commands print."""
    if getattr(processor, "video_processor", None) is not None:
        return processor
    return VideoFramesProcessor(
        image_processor,
        tokenizer,
        placeholders_per_frame(vision_config),
        reason or "the checkpoint has no video processor",
        chat_template,
    )


def _chat_template(name_or_path: str) -> str | None:
    """The checkpoint's processor chat template (chat_template.jinja, or 4.x's chat_template.json)."""
    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            with open(path, encoding="utf-8") as file:
                text = file.read()
            return text if name.endswith(".jinja") else json.loads(text)["chat_template"]
    return None


def load_video_processor(name_or_path: str, **kwargs):
    """Video-LLaVA's processor for a checkpoint: the stock one (`AutoProcessor`) where it builds, else a
    `VideoFramesProcessor` that needs no torchvision (see the module docstring)."""
    processor, reason = loaded_or_reason(lambda: AutoProcessor.from_pretrained(name_or_path, **kwargs))
    if processor is not None:
        return processor
    vision_config = AutoConfig.from_pretrained(name_or_path, **kwargs).vision_config
    return processor_for_videos(
        None,
        reason,
        AutoImageProcessor.from_pretrained(name_or_path, **kwargs),
        AutoTokenizer.from_pretrained(name_or_path, **kwargs),
        vision_config,
        _chat_template(name_or_path),
    )
