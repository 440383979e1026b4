"""What differs between benchmarking images, AnyRes images and videos: the model's steps, the tower, the
synthetic inputs and the names in the results. `bench` measures one modality per model: a Video-LLaVA
its videos, a LLaVA-NeXT or LLaVA-OneVision its images as base view and crops, a LLaVA its images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import LlavaImageProcessor

from ..modeling.anyres import AnyresLayout, view_budgets
from ..modeling.frames import frame_settings
from ..modeling.modeling_llava_onevision_prumerge import max_crops
from ..modeling.reduction_settings import ReductionSettings
from ..testing.tiny_video import make_clip
from .roofline import IMAGE_PROMPT, AnyresImage, PromptShape, anyres_prompt, bench_anyres_image, video_prompt


def synthetic_images(count: int, size: int, seed: int) -> list[Image.Image]:
    """Dark noise with 1 to 4 bright squares, placed differently in each image, so that the [CLS]
    attention, and so the number of tokens PruMerge keeps, differs between images."""
    images = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        square = max(1, size // 7)
        for _ in range(1 + (seed + index) % 4):
            y, x = rng.integers(0, size - square, 2)
            pixels[y : y + square, x : x + square] = rng.integers(150, 255, 3, dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def processed(image_processor, images: list[Image.Image]) -> torch.Tensor:
    """[n, 3, H, W] from an image processor, under either name it gives them (Video-LLaVA's image
    processor says `pixel_values_images`)."""
    outputs = image_processor(images=images, return_tensors="pt")
    return outputs["pixel_values"] if "pixel_values" in outputs else outputs["pixel_values_images"]


class ImagePath:
    """One image a prompt, through the image tower (LLaVA-1.5's)."""

    name = "image"
    frames = 1  # tower inputs per item
    budget_field = "num_visual_tokens"  # what METHOD@TOKENS fixes
    count_fields = ("visual_tokens_per_image", "visual_tokens_min", "visual_tokens_max")
    count_header = "tokens/img"
    stock_path = "stock LLaVA vision path"
    encoder_step = "encode_patches"
    prompt: PromptShape = IMAGE_PROMPT

    def token_id(self, config) -> int:
        return config.image_token_id

    def expanded_length(self, config) -> int:
        """Placeholders the stock processor writes for one item."""
        return config.image_seq_length

    def image_processor(self, image_size: int):
        """The random architectures' image processor: CLIP's mean and std, padding images to a square as
        LLaVA-1.5 does."""
        return LlavaImageProcessor(
            do_pad=True,
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )

    def tower(self, inner):
        return getattr(inner, inner.image_tower_attribute)

    def encode(self, inner, pixel_values: torch.Tensor, settings: ReductionSettings):
        return inner.encode_patches(pixel_values, reduction=settings)

    def reduce(self, inner, encoded, settings: ReductionSettings):
        return inner.reduce_patches(encoded, reduction=settings)

    def tokens(self, inner, reduced):
        return inner.image_tokens(reduced)

    def tower_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values  # [B, 3, H, W]

    def item_counts(self, counts: list[int]) -> list[int]:
        """Tokens per item from the reducer's counts per tower input."""
        return counts

    def check_settings(self, settings: ReductionSettings) -> None:
        """Nothing to check beyond what the reducer checks per image."""

    def synthetic_pixels(self, image_processor, config, count: int, seed: int) -> torch.Tensor:
        """Synthetic images at the tower's size: [B, 3, H, W]."""
        size = config.vision_config.image_size
        return processed(image_processor, synthetic_images(count, size, seed))

    def describe_placeholders(self, config) -> str:
        return f"{config.image_seq_length} image placeholders"


class VideoPath:
    """One video a prompt, its frames through the video tower as a batch (Video-LLaVA's); each frame's
    [CLS] token reaches the LLM, first among its tokens. The same members as ImagePath."""

    name = "video"
    budget_field = "num_video_tokens"
    count_fields = ("video_tokens_per_video", "video_tokens_min", "video_tokens_max")
    count_header = "tokens/video"
    stock_path = "stock Video-LLaVA video path"
    encoder_step = "encode_video_frames"

    def __init__(self, frames: int, patches: int):
        self.frames = frames
        self.patches = patches  # per frame
        self.prompt = video_prompt(frames, patches)

    def token_id(self, config) -> int:
        return config.video_token_id

    def expanded_length(self, config) -> int:
        return config.video_seq_length

    def image_processor(self, image_size: int):
        """CLIP's mean and std; Video-LLaVA resizes and center-crops frames (no padding)."""
        return LlavaImageProcessor(
            do_pad=False,
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )

    def tower(self, inner):
        return inner.video_tower

    def encode(self, inner, pixel_values: torch.Tensor, settings: ReductionSettings):
        return inner.encode_video_frames(pixel_values, reduction=settings)

    def reduce(self, inner, encoded, settings: ReductionSettings):
        return inner.reduce_video_frames(encoded, self.frames, settings)

    def tokens(self, inner, reduced):
        return inner.video_tokens(reduced, self.frames)

    def tower_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.flatten(0, 1)  # [B, F, 3, H, W] -> [B * F, 3, H, W], as stock Video-LLaVA

    def item_counts(self, counts: list[int]) -> list[int]:
        return [sum(counts[start : start + self.frames]) for start in range(0, len(counts), self.frames)]

    def check_settings(self, settings: ReductionSettings) -> None:
        """A per-video budget too small for the frames fails here, before any pass."""
        frame_settings(settings, self.frames)

    def synthetic_pixels(self, image_processor, config, count: int, seed: int) -> torch.Tensor:
        """Clips of bright shapes moving over dark noise, a different clip per video: [B, F, 3, H, W]."""
        size = config.vision_config.image_size
        clips = [make_clip(seed + index, self.frames, size, size) for index in range(count)]
        return torch.stack([processed(image_processor, clip) for clip in clips])

    def describe_placeholders(self, config) -> str:
        return (
            f"{config.video_seq_length} video placeholders ({self.frames} frames x "
            f"([CLS] + {self.patches} patches))"
        )


class AnyresPath(ImagePath):
    """One LLaVA-NeXT image a prompt, of the path's size: its base view and crops through the image tower as
    one batch (encode_views), each view reduced with its own [CLS] attention and the views' tokens laid out
    as the model lays them out (newlines included in the counts). The same members as ImagePath."""

    stock_path = "stock LLaVA-NeXT vision path"
    encoder_step = "encode_views"

    def __init__(self, image: AnyresImage):
        self.image = image
        self.prompt = anyres_prompt(image)
        rows, cols = image.grid
        self.frames = 1 + rows * cols  # the views
        top, bottom, left, right = image.unpadded_window
        self.layout = AnyresLayout(rows, cols, image.side, top, bottom, left, right)

    def expanded_length(self, config) -> int:
        """What `LlavaNextProcessor` writes for the image (its arithmetic, in `roofline.AnyresImage`)."""
        return self.prompt.stock_tokens

    def image_processor(self, image_size: int):
        """LLaVA-NeXT's: CLIP's mean and std, a base view and crops at the grid resolution that fits. Imported
        here, not with the module: transformers 5 warns when the name is first resolved without torchvision."""
        from transformers import LlavaNextImageProcessor

        return LlavaNextImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=[list(resolution) for resolution in self.image.grid_pinpoints],
        )

    def image_sizes(self, count: int) -> torch.Tensor:
        return torch.tensor([[self.image.height, self.image.width]] * count)

    def encode(self, inner, pixel_values: torch.Tensor, settings: ReductionSettings):
        layouts = inner.image_layouts(pixel_values, self.image_sizes(len(pixel_values)))
        encoded, _ = inner.encode_views(pixel_values, layouts, None, None, settings)
        return encoded, layouts

    def reduce(self, inner, encoded, settings: ReductionSettings):
        views, layouts = encoded
        return inner.reduce_images(views, layouts, settings)

    def tokens(self, inner, reduced):
        return inner.anyres_tokens(reduced, self.image_sizes(len(reduced.layouts)))

    def tower_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.flatten(0, 1)  # [B, views, 3, H, W] -> [B * views, 3, H, W], as stock LLaVA-NeXT

    def check_settings(self, settings: ReductionSettings) -> None:
        """A per-image budget too small (or too large) for the views and newlines fails here, before any pass."""
        view_budgets(settings, self.layout, self.image.view_patches[1:])

    def synthetic_pixels(self, image_processor, config, count: int, seed: int) -> torch.Tensor:
        """Synthetic images of the path's (square) size, each as its views: [B, views, 3, H, W]."""
        return processed(image_processor, synthetic_images(count, self.image.height, seed))

    def describe_placeholders(self, config) -> str:
        rows, cols = self.image.grid
        patches = self.image.view_patches
        return (
            f"{self.prompt.stock_tokens} image placeholders (a {self.image.height}x{self.image.width} image: base "
            f"view {patches[0]} + {rows}x{cols} crops' {sum(patches[1:])} unpadded patches + "
            f"{self.image.newlines} newlines)"
        )


class OnevisionPath(AnyresPath):
    """One LLaVA-OneVision image a prompt (alone in it: AnyRes views), of the path's size: as AnyresPath, with
    OneVision's image processor (SigLIP's normalization, views resized without cropping)."""

    stock_path = "stock LLaVA-OneVision vision path"

    def image_processor(self, image_size: int):
        """LLaVA-OneVision's (imported here: transformers 5 warns when the name is first resolved without
        torchvision, and falls back to the PIL one)."""
        from transformers import LlavaOnevisionImageProcessor

        return LlavaOnevisionImageProcessor(
            size={"height": image_size, "width": image_size},
            image_grid_pinpoints=[list(resolution) for resolution in self.image.grid_pinpoints],
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )


VisualPath = ImagePath | AnyresPath | OnevisionPath | VideoPath


def visual_path(model) -> VisualPath:
    """The modality `bench` measures for a PruMerge model: AnyRes images of the largest square grid resolution
    stock feeds unshrunk for a LLaVA-OneVision (1152 x 1152 for anyres_max_9: 10 views; its videos are not
    benchmarked), videos for a Video-LLaVA, AnyRes images of the largest square grid resolution for a
    LLaVA-NeXT (672 x 672 for llava-v1.6: 5 views), else images."""
    config = model.config
    vision = config.vision_config
    if getattr(config, "vision_aspect_ratio", None):  # LLaVA-OneVision: crops past anyres_max_<n> are shrunk
        crops = max_crops(config.vision_aspect_ratio)
        return OnevisionPath(
            bench_anyres_image(vision.image_size, vision.patch_size, config.image_grid_pinpoints, crops)
        )
    if "video" in model.model.modality_inputs:
        patches = (vision.image_size // vision.patch_size) ** 2
        return VideoPath(config.video_seq_length // (patches + 1), patches)
    if getattr(config, "image_grid_pinpoints", None):
        return AnyresPath(
            bench_anyres_image(vision.image_size, vision.patch_size, config.image_grid_pinpoints)
        )
    return ImagePath()
