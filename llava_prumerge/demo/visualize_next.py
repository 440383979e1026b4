"""What PruMerge did to an AnyRes image's views, as data and as a picture (`llava-prumerge visualize`
with a LLaVA-NeXT or LLaVA-OneVision model).

LLaVA-NeXT and LLaVA-OneVision see an image as a base view (the whole image at the tower's resolution)
and a grid of crops; the model reduces every view with its own importance scores ([CLS] attention, or
the stand-in of a tower without [CLS]), each crop over the patches that survive unpadding only. The
picture puts each view's patch picture (as `visualize` draws an image) above its importance
histogram: the base view in the first column, the crops beside it where they sit in the grid, their
padding blacked out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..modeling.anyres import view_budgets
from ..modeling.reduction_settings import ReductionSettings
from ..modeling.token_reduction import ReducedTokens
from .visualize import (
    PADDING,
    PatchReduction,
    drawn_settings,
    importance_label,
    patch_reduction,
    vision_tower_view,
)
from .visualize_video import draw_panels

TINY_ANYRES_MODEL_NOTE = (
    "tiny random-weight {name}: the selection shows the mechanics, not a trained tower's choices"
)


def is_anyres(model) -> bool:
    """Whether `model` sees images as AnyRes views (a LLaVA-NeXT or LLaVA-OneVision)."""
    return getattr(model.config, "image_grid_pinpoints", None) is not None


@dataclass
class AnyresReduction:
    """What the AnyRes picture shows: each view's reduction and how the views tile the image."""

    views: list[PatchReduction]  # the base view, then the crops in raster order of the grid
    grid: tuple[int, int]  # rows and columns of crops
    image_size: tuple[int, int]  # (height, width) of the image
    stock_tokens: int  # what the stock model feeds the LLM: the base view, the crop map and a newline a row
    model_name: str  # "LLaVA-NeXT" or "LLaVA-OneVision"

    @property
    def num_tokens(self) -> int:
        """Tokens reaching the LLM: every view's kept and summary tokens, and an `image_newline` a row of crops."""
        return sum(view.num_tokens for view in self.views) + self.grid[0]


def crop_reduction(
    settings: ReductionSettings,
    processor,
    pixel_values: torch.Tensor,
    attention: torch.Tensor,
    reduced: ReducedTokens | None,
    patches: torch.Tensor,
    score: str = PatchReduction.score,
) -> PatchReduction:
    """`patch_reduction` of a crop whose reducer saw only `patches` (those unpadding keeps; `reduced` is None
    when none is kept): the histogram shows their attention, the picture the whole crop, its padding as
    PADDING."""
    num_patches = len(attention)
    roles, clusters = np.full(num_patches, PADDING, dtype=np.int8), np.full(num_patches, -1, dtype=np.int64)
    if reduced is None:
        view = vision_tower_view(processor, pixel_values)
        attention = attention.float().cpu().numpy()
        return PatchReduction(view, attention, roles, clusters, 0, settings.iqr_scale, score=score)
    seen = patch_reduction(settings, processor, pixel_values, attention[patches], reduced, score)
    kept = patches.cpu().numpy()
    roles[kept], clusters[kept] = seen.roles, seen.clusters
    return replace(seen, roles=roles, clusters=clusters)


@torch.inference_mode()
def reduce_anyres_image(
    model, processor, image: Image.Image, token_reduction: str, settings: ReductionSettings | None = None
) -> AnyresReduction:
    """Run the vision tower on the image's views and the reducer on each, as the model does, and collect
    what the picture shows: under `visualize`'s settings for the method `token_reduction`, or under
    `settings` (a fixed budget, say) where given."""
    inputs = processor.image_processor(images=image, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(model.device, model.dtype)  # [1, views, 3, H, W]
    image_sizes = inputs["image_sizes"]
    settings = settings or drawn_settings(model, token_reduction)
    (layout,) = model.model.image_layouts(pixel_values, image_sizes)
    encoded, settings = model.model.encode_views(pixel_values, [layout], None, None, settings)
    score = importance_label(model, settings)
    reduced = model.model.reduce_each_view(encoded, 0, layout, settings)
    crop_sizes = [len(patches) for _, patches in reduced[1:]]
    per_view = view_budgets(settings, layout, crop_sizes)
    views = []
    for index, ((tokens, patches), view_settings) in enumerate(zip(reduced, per_view, strict=True)):
        pixels, attention = pixel_values[0, index : index + 1], encoded.attention[index]
        if patches is None:  # the base view: every patch
            views.append(patch_reduction(view_settings, processor, pixels, attention, tokens, score))
        else:  # a crop of padding only has no settings of its own: the image's draw its histogram
            crop_settings = view_settings or settings
            views.append(crop_reduction(crop_settings, processor, pixels, attention, tokens, patches, score))
    stock = model.model.stock_image_length(layout)
    height, width = (int(value) for value in image_sizes[0])
    grid = (layout.grid_rows, layout.grid_cols)
    return AnyresReduction(views, grid, (height, width), stock, model.model.model_name)


def draw_anyres(reduction: AnyresReduction, title: str) -> Figure:
    """The base view in the first column, each crop at its place in the grid beside it (see `draw_panels`)."""
    rows, columns = reduction.grid
    cells = [(0, 0)] + [(row, 1 + column) for row in range(rows) for column in range(columns)]
    titles = [f"base view: {reduction.views[0].num_tokens} tokens"] + [
        f"crop {row + 1},{column + 1}: {view.num_tokens} tokens"
        for (row, column), view in zip(
            [(r, c) for r in range(rows) for c in range(columns)], reduction.views[1:], strict=True
        )
    ]
    height, width = reduction.image_size
    return draw_panels(
        reduction.views,
        titles,
        cells,
        f"{title}\n{reduction.num_tokens} visual tokens reach the LLM (every view's kept and summary tokens, "
        f"{rows} image_newline); stock {reduction.model_name} for this {width}x{height} image "
        f"({1 + rows * columns} views): "
        f"{reduction.stock_tokens}",
    )
