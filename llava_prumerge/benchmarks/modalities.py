"""What differs between benchmarking images, AnyRes images and videos: the model's steps, the tower, the
synthetic inputs and the names in the results. `bench` measures one modality per model: a Video-LLaVA
its videos, a LLaVA-NeXT or LLaVA-OneVision its images as base view and crops, a LLaVA its images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from transformers import LlavaImageProcessor

from ..common.timing import PhaseTimer
from ..modeling.anyres import AnyresLayout, view_budgets
from ..modeling.frames import frame_settings
from ..modeling.modeling_llava_onevision_prumerge import max_crops
from ..modeling.qwen_vision import encode_merged_tokens, last_full_attention_block, merged_importance
from ..modeling.qwen_vl import check_budget
from ..modeling.reduction_settings import ReductionSettings
from ..modeling.token_reduction import patch_importance
from ..modeling.vision_encoding import clip_transformer
from ..testing.tiny_video import make_clip
from .roofline import (
    IMAGE_PROMPT,
    QWEN_IMAGE_SIZE,
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    AnyresImage,
    PromptShape,
    anyres_prompt,
    bench_anyres_image,
    image_prompt,
    qwen_grid,
    video_prompt,
)


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


class VisualPathBase:
    """What every path shares: the stock tower call, the placeholder ids and positions of a prompt, the
    reducer's counts and the report's words for the vision path."""

    def run_stock_tower(self, tower, pixel_values: torch.Tensor):
        """The stock vision path's tower call: every layer, every hidden state kept."""
        return tower(self.tower_inputs(pixel_values), output_hidden_states=True)

    def for_image(self, height: int, width: int, processed) -> VisualPath:
        """This path for one real image of `height` x `width` pixels, as its processor gave it (`processed`)
        rather than for bench's synthetic ones: itself where the layout does not follow the image."""
        return self

    def vision_path(self, config) -> str:
        """What PruMerge's vision path runs, in the report."""
        return f"{self.encoder_step}: layers up to {config.vision_feature_layer}, reduction-layer q/k"

    def placeholder_ids(self, config) -> list[int]:
        """The ids the stock processor writes for one item."""
        return [self.token_id(config)] * self.expanded_length(config)

    def prompt_ids(self, config) -> list[int]:
        """The ids a prompt holds for one item before a processor (or a serving engine) expands it."""
        return [self.token_id(config)]

    def prompt_positions(self, inner, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The positions the language model places the prompt at: its own count (None), for LLaVA-family models."""
        return None

    def token_counts(self, reduced) -> list[int]:
        """Per tower input, the tokens its reduction keeps."""
        return reduced.num_tokens

    def time_scoring(self, subject, batch_size: int) -> float:
        """Seconds of the vision-tower work PruMerge adds: the reduction layer's norm and q/k projections, and
        the patches' importance (as in encode_patches), on a hidden state of the real shape (every frame of a
        video)."""
        config = subject.model.config
        vision = config.vision_config
        layer = clip_transformer(self.tower(subject.model.model)).encoder.layers[config.reduction_layer]
        tokens = 1 + (vision.image_size // vision.patch_size) ** 2
        hidden = torch.randn(
            batch_size * self.frames,
            tokens,
            vision.hidden_size,
            device=subject.model.device,
            dtype=subject.model.dtype,
        )
        timer = PhaseTimer(subject.model.device)
        with timer("qk"):
            normed = layer.layer_norm1(hidden)
            queries, keys = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
            patch_importance(
                queries, keys, config.importance, config.class_attention, vision.num_attention_heads
            )
        return timer.seconds["qk"]


class ImagePath(VisualPathBase):
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

    def image_pixels(self, config) -> tuple[int, int]:
        """(width, height) of the images the path is measured on: the tower's square."""
        size = config.vision_config.image_size
        return size, size

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


class VideoPath(VisualPathBase):
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

    def for_image(self, height: int, width: int, processed) -> VisualPath:
        """The views and layout of an image of this size (the grid resolution that fits it)."""
        return type(self)(replace(self.image, height=height, width=width))

    def expanded_length(self, config) -> int:
        """What `LlavaNextProcessor` writes for the image (its arithmetic, in `roofline.AnyresImage`)."""
        return self.prompt.stock_tokens

    def image_pixels(self, config) -> tuple[int, int]:
        return self.image.width, self.image.height

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


class QwenPath(ImagePath):
    """One Qwen-VL image a prompt, at its native resolution (`height` x `width` pixels): the whole tower on its
    patches, each merged token scored on the last full-attention block and reduced, kept tokens at stock's
    3-D positions. The same members as ImagePath."""

    stock_path = "stock Qwen-VL vision path"
    encoder_step = "encode_merged_tokens"

    def __init__(self, height: int, width: int, patch_size: int, merge_size: int):
        self.height, self.width = height, width
        self.rows, self.cols = qwen_grid(height, width, patch_size, merge_size)
        self.patch_size, self.merge_size = patch_size, merge_size
        self.prompt = image_prompt(self.rows * self.cols // merge_size**2)
        self.grid = None  # [B, 3] of the last synthetic batch

    def expanded_length(self, config) -> int:
        return self.prompt.stock_tokens

    def vision_path(self, config) -> str:
        return f"{self.encoder_step}: every block, the last full-attention block's q/k scored"

    def placeholder_ids(self, config) -> list[int]:
        """Overridden: the vision start and end tokens around the image's pads, as the processor writes them
        (4.x's stock positions look for the start token)."""
        pads = [config.image_token_id] * self.expanded_length(config)
        return [config.vision_start_token_id, *pads, config.vision_end_token_id]

    def prompt_ids(self, config) -> list[int]:
        """Overridden: one pad between the vision start and end tokens."""
        return [config.vision_start_token_id, config.image_token_id, config.vision_end_token_id]

    def image_pixels(self, config) -> tuple[int, int]:
        return self.width, self.height

    def image_processor(self, image_size: int):
        """Qwen-VL's image processor, with bounds that keep the path's image at its native resolution (imported
        here: transformers 5 warns when the name is first resolved without torchvision)."""
        from transformers import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor(
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            min_pixels=QWEN_MIN_PIXELS,
            max_pixels=QWEN_MAX_PIXELS,
        )

    def synthetic_pixels(self, image_processor, config, count: int, seed: int) -> torch.Tensor:
        """Synthetic images of the path's size, as flattened patches [B * patches, C * T * P * P]."""
        images = [image.resize((self.width, self.height)) for image in synthetic_images(count, 64, seed)]
        outputs = image_processor(images=images, return_tensors="pt")
        self.use_grid(outputs["image_grid_thw"])
        return outputs["pixel_values"]

    def use_grid(self, grid: torch.Tensor) -> None:
        """Take the patch grid [B, 3] the processor gave the images: a checkpoint's processor may bound an
        image's pixels otherwise than the default, and its grid decides the tokens."""
        self.grid = grid
        self.rows, self.cols = (int(value) for value in grid[0, 1:])
        self.prompt = image_prompt(self.rows * self.cols // self.merge_size**2)

    def for_image(self, height: int, width: int, processed) -> VisualPath:
        """The grid the processor gave this image (`processed["image_grid_thw"]`)."""
        self.use_grid(processed["image_grid_thw"])
        return self

    def tower(self, inner):
        return inner.visual

    def run_stock_tower(self, tower, pixel_values: torch.Tensor):
        return tower(pixel_values, grid_thw=self.grid.to(pixel_values.device))

    def encode(self, inner, pixel_values: torch.Tensor, settings: ReductionSettings):
        return encode_merged_tokens(inner.visual, pixel_values, self.grid.to(pixel_values.device), settings)[
            0
        ]

    def reduce(self, inner, encoded, settings: ReductionSettings):
        return inner.reduce_merged_tokens("image", encoded, self.grid, settings)

    def tokens(self, inner, reduced):
        return reduced  # already the items' tokens in the LLM's space

    def token_counts(self, reduced) -> list[int]:
        return reduced.counts

    def prompt_positions(self, inner, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Overridden: stock's 3-D positions of the prompt, which compaction carries."""
        grid = self.grid.to(input_ids.device)
        return inner.prompt_positions(input_ids, None, attention_mask, None, None, {"image_grid_thw": grid})

    def time_scoring(self, subject, batch_size: int) -> float:
        """Overridden: seconds of the work PruMerge adds to the tower: the full-attention block's norm, q/k and rotary
        embedding and the stand-in score over each image's patches, on hidden states of the real shape."""
        tower = subject.model.model.visual
        block = tower.blocks[last_full_attention_block(tower)]
        patches = self.rows * self.cols
        hidden = torch.randn(
            batch_size * patches, block.norm1.weight.shape[0], device=tower.device, dtype=tower.dtype
        )
        grid = torch.tensor([[1, self.rows, self.cols]] * batch_size, device=tower.device)
        rotary = torch.randn(
            batch_size * patches, block.attn.qkv.in_features // block.attn.num_heads, device=tower.device
        )
        captured = {"hidden": hidden, "position_embeddings": (rotary.cos(), rotary.sin()),
                    "cu_seqlens": torch.arange(batch_size + 1) * patches}  # fmt: skip
        settings = subject.model.config.reduction_settings
        timer = PhaseTimer(subject.model.device)
        with timer("scoring"):
            merged_importance(tower, block, captured, grid, settings, self.merge_size**2)
        return timer.seconds["scoring"]

    def check_settings(self, settings: ReductionSettings) -> None:
        """A budget larger than the image's merged tokens fails here, before any pass."""
        check_budget(settings, self.prompt.stock_tokens, "image")

    def describe_placeholders(self, config) -> str:
        return (
            f"{self.prompt.stock_tokens} image placeholders (a {self.width}x{self.height} image: {self.rows}x{self.cols} "
            f"patches, merged {self.merge_size}x{self.merge_size})"
        )


VisualPath = ImagePath | AnyresPath | OnevisionPath | QwenPath | VideoPath


def visual_path(model, image_size: tuple[int, int] | None = None) -> VisualPath:
    """The modality `bench` measures for a PruMerge model: AnyRes images of the largest square grid resolution
    stock feeds unshrunk for a LLaVA-OneVision (1152 x 1152 for anyres_max_9: 10 views; its videos are not
    benchmarked), videos for a Video-LLaVA, AnyRes images of the largest square grid resolution for a
    LLaVA-NeXT (672 x 672 for llava-v1.6: 5 views), else images."""
    config = model.config
    vision = config.vision_config
    if hasattr(model.model, "reduce_merged_tokens"):  # Qwen-VL: native-resolution images
        height, width = image_size or QWEN_IMAGE_SIZE
        return QwenPath(height, width, vision.patch_size, vision.spatial_merge_size)
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
