"""What PruMerge did to a Qwen2.5-VL or Qwen2-VL image, as data and as a picture (`llava-prumerge visualize`
with a Qwen-VL model).

Qwen-VL sees an image at its native resolution: the processor resizes it to a whole number of 2 x 2 patch
groups a side (28 px for the released models) and the tower merges each group into one token, the LLM's.
The reducer scores those merged tokens with the no-[CLS] stand-in importance and reduces them in raster
order of their grid, which is as rectangular as the image. The picture is `visualize`'s over that grid:
the image as the tower sees it, one cell a merged token, beside the histogram of their importance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..modeling.qwen_vision import encode_merged_tokens
from ..modeling.qwen_vl import check_budget
from ..modeling.reduction_settings import ReductionSettings, resolved_importance
from .visualize import PatchReduction, draw, drawn_settings, grid_reduction, score_label

TINY_QWEN_MODEL_NOTE = (
    "tiny random-weight {name}: the selection shows the mechanics, not a trained tower's choices"
)
MODEL_NAMES = {"qwen2_5_vl_prumerge": "Qwen2.5-VL", "qwen2_vl_prumerge": "Qwen2-VL"}
MERGED_TOKEN_NAMES = ("merged token", "merged tokens")


@dataclass
class QwenReduction:
    """What the Qwen-VL picture shows: the reduction over the image's merged tokens, and what stock feeds
    the LLM."""

    image: PatchReduction  # one cell a merged token; its view is the image as the processor resized it
    image_size: tuple[int, int]  # (height, width) of the image
    merge_size: int  # patches a side of a merged token
    model_name: str  # "Qwen2.5-VL" or "Qwen2-VL"

    @property
    def num_tokens(self) -> int:
        """Tokens reaching the LLM: the kept tokens and the summary token."""
        return self.image.num_tokens

    @property
    def stock_tokens(self) -> int:
        """What stock Qwen-VL feeds the LLM: every merged token (rows x columns of patches / merge_size^2)."""
        return len(self.image.roles)


def resized_view(image: Image.Image, image_processor, grid_thw: torch.Tensor, patch_size: int) -> np.ndarray:
    """The image as the tower sees it [h * patch_size, w * patch_size, 3] uint8: resized as the processor
    resized it, to the size its `grid_thw` [1, 3] (1, h, w) of patches says."""
    _, rows, columns = (int(value) for value in grid_thw[0])
    size = (columns * patch_size, rows * patch_size)  # (width, height)
    return np.asarray(image.convert("RGB").resize(size, resample=image_processor.resample))


@torch.inference_mode()
def reduce_qwen_image(
    model, processor, image: Image.Image, token_reduction: str, settings: ReductionSettings | None = None
) -> QwenReduction:
    """Run the vision tower on one image and the reducer on its merged tokens, as the model does, and collect
    what the picture shows: under `visualize`'s settings for the method `token_reduction`, or under
    `settings` (a fixed budget, say) where given."""
    inputs = processor.image_processor(images=image, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(model.device, model.dtype)  # [patches, C * T * P * P]
    grid_thw = inputs["image_grid_thw"]  # [1, 3]: (1, h, w) patches
    settings = settings or drawn_settings(model, token_reduction)
    vision = model.config.vision_config
    merged, _ = encode_merged_tokens(model.model.visual, pixel_values, grid_thw.to(model.device), settings)
    tokens = merged.sequence(0)  # the image's merged tokens [1, h * w / merge^2, ...], raster order
    check_budget(settings, tokens.features.shape[1], "image")
    reduced = tokens.reduce(settings)
    score = score_label(resolved_importance(settings.importance, class_token=False))  # no [CLS] in the tower
    _, rows, columns = (int(patches) // vision.spatial_merge_size for patches in grid_thw[0])
    view = resized_view(image, processor.image_processor, grid_thw, vision.patch_size)
    drawn = grid_reduction(settings, view, tokens.attention[0], reduced, score, (rows, columns))
    return QwenReduction(
        replace(drawn, cell_names=MERGED_TOKEN_NAMES),
        (image.height, image.width),
        vision.spatial_merge_size,
        MODEL_NAMES[model.config.model_type],
    )


def draw_qwen(reduction: QwenReduction, title: str) -> Figure:
    """`visualize`'s picture over the merged tokens, its title saying what reaches the LLM against stock."""
    height, width = reduction.image_size
    view_height, view_width = reduction.image.view.shape[:2]
    merge = reduction.merge_size
    return draw(
        reduction.image,
        f"{title}\n{reduction.num_tokens} visual tokens reach the LLM (kept and summary tokens); stock "
        f"{reduction.model_name} for this {width}x{height} image (resized to {view_width}x{view_height}, "
        f"{merge}x{merge} patches a token): {reduction.stock_tokens}",
    )
