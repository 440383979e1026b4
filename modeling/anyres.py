# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""AnyRes images for PruMerge: a base view plus a grid of crops, each view reduced, laid out in stock's order.

LLaVA-NeXT and LLaVA-OneVision split an image into a base view (the whole image at the tower's
resolution) and a grid of high-resolution crops; stock feeds the LLM the base view's patches, then the
crops' patches as one map in raster order, with the padding that made the image fit the grid removed
("unpadded") and an `image_newline` token closing every row of patches. PruMerge applies per view:
- the base view is reduced as a single image (tokens in the order the settings ask for);
- a crop is reduced over its patches that survive unpadding only (padding is neither kept nor merged);
- the crops' kept tokens are laid out in stock's order, the raster order of the unpadded map, and one
  `image_newline` closes each row of crops (it stands where stock's last newline of those patch rows
  stands), after that row's summary tokens. The reduced sequence is thus stock's sequence with tokens
  left out: what the model learned about order and row ends still holds.
Budgets: adaptive per view, or `num_visual_tokens` for the whole image (newlines included), shared by
the views in proportion to their (unpadded) patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.image_processing_utils import select_best_resolution

from .errors import ReductionSettingsError, VisualInputError
from .reduction_settings import ReductionSettings
from .token_reduction import ReducedTokens, raise_if_not_finite
from .vision_encoding import EncodedPatches, described_shape, encode_patches


@dataclass(frozen=True)
class AnyresLayout:
    """Where an image's crops sit: a grid of crops, each `side` x `side` patches, and the window of the
    whole crop map that unpadding keeps (rows [top, bottom), columns [left, right)). A grid of 0 x 0 is
    an image seen as its base view alone (LLaVA-OneVision's images in a multi-image prompt), which
    `base_newline` closes with an `image_newline`."""

    grid_rows: int
    grid_cols: int
    side: int
    top: int
    bottom: int
    left: int
    right: int
    base_newline: bool = False

    @classmethod
    def base_only(cls, side: int) -> AnyresLayout:
        """The layout of an image seen as its base view and one `image_newline` (no crops)."""
        return cls(0, 0, side, 0, 0, 0, 0, base_newline=True)

    @property
    def num_views(self) -> int:
        return 1 + self.grid_rows * self.grid_cols

    @property
    def newlines(self) -> int:
        """`image_newline` tokens of the reduced image: one per row of crops (or one after a lone base view)."""
        return self.grid_rows + self.base_newline

    @property
    def stock_length(self) -> int:
        """The crops' tokens in stock LLaVA-NeXT: the unpadded patches and one newline per patch row."""
        return (self.bottom - self.top) * (self.right - self.left + 1)

    def crop_patches(self, crop: int) -> torch.Tensor:
        """The patches of crop `crop` (raster order over the grid) that unpadding keeps, as local indices."""
        grid_row, grid_col = divmod(crop, self.grid_cols)
        local = torch.arange(self.side * self.side)
        rows = grid_row * self.side + local // self.side
        cols = grid_col * self.side + local % self.side
        kept = (rows >= self.top) & (rows < self.bottom) & (cols >= self.left) & (cols < self.right)
        return local[kept]


@dataclass
class ReducedViews:
    """Every image's views after the reducer, before the projector: with reduction, per image and view (base
    first) its tokens [n, C] and the local patches it kept; without, every view's tokens (`unreduced`)."""

    layouts: list[AnyresLayout]
    views: list[list[tuple[torch.Tensor, torch.Tensor]]] | None
    unreduced: ReducedTokens | None = None
    unreduced_lengths: list[int] | None = None  # without reduction: per image, stock's token count

    @property
    def num_tokens(self) -> list[int]:
        """Per image, the tokens the LLM gets: its views' tokens and its `image_newline` tokens."""
        if self.views is None:
            return list(self.unreduced_lengths)
        return [
            sum(len(tokens) for tokens, _ in views) + layout.newlines
            for views, layout in zip(self.views, self.layouts, strict=True)
        ]


def grid_pinpoints_problem(grid_pinpoints, view_size: int) -> str | None:
    """What is wrong with a config's `image_grid_pinpoints` (None when nothing): AnyRes needs at least one
    [height, width] grid resolution, each side a positive multiple of the tower's view size."""
    if not isinstance(grid_pinpoints, list | tuple) or not grid_pinpoints:
        return (
            f"image_grid_pinpoints must be a non-empty list of [height, width] pairs, got {grid_pinpoints!r}"
        )
    for pinpoint in grid_pinpoints:
        sides = list(pinpoint) if isinstance(pinpoint, list | tuple) else []
        if len(sides) != 2 or not all(
            isinstance(side, int) and side > 0 and side % view_size == 0 for side in sides
        ):
            return (
                f"image_grid_pinpoints holds {pinpoint!r}; each must be [height, width], positive multiples of the "
                f"tower's image_size {view_size}"
            )
    return None


def anyres_layout(image_size, grid_pinpoints: list, view_size: int, side: int) -> AnyresLayout:
    """The layout of an image of `image_size` (height, width), as stock LLaVA-NeXT computes it: the best
    grid resolution, then the padding it removes (`unpad_image`'s arithmetic, on patch counts)."""
    height, width = (int(value) for value in image_size)
    best_height, best_width = select_best_resolution((height, width), grid_pinpoints)
    grid_rows, grid_cols = best_height // view_size, best_width // view_size
    map_height, map_width = grid_rows * side, grid_cols * side
    if width / height > map_width / map_height:
        new_height = int(round(height * (map_width / width), 7))
        padding = (map_height - new_height) // 2
        return AnyresLayout(grid_rows, grid_cols, side, padding, map_height - padding, 0, map_width)
    new_width = int(round(width * (map_height / height), 7))
    padding = (map_width - new_width) // 2
    return AnyresLayout(grid_rows, grid_cols, side, 0, map_height, padding, map_width - padding)


def split_budget(total: int, sizes: list[int], smallest: int) -> list[int]:
    """`total` tokens shared by views of `sizes` patches, in proportion to them (largest remainder); each
    view gets at least `smallest` (all of a smaller one: a crop of padding only gets none) and at most its
    patches: views whose share would pass that are filled and the rest shared again among the others.
    Needs sum(min(smallest, size)) <= total <= sum(sizes)."""
    floors = [min(smallest, size) for size in sizes]
    spare = total - sum(floors)
    shares = [spare * size / max(sum(sizes), 1) for size in sizes]
    budgets = [floor + int(share) for floor, share in zip(floors, shares, strict=True)]
    by_remainder = sorted(range(len(sizes)), key=lambda view: (int(shares[view]) - shares[view], view))
    for view in by_remainder[: total - sum(budgets)]:
        budgets[view] += 1
    full = [budget >= size for budget, size in zip(budgets, sizes, strict=True)]
    if all(budget <= size for budget, size in zip(budgets, sizes, strict=True)) or all(full):
        return budgets
    rest = [view for view in range(len(sizes)) if not full[view]]
    rest_budgets = split_budget(
        total - sum(size for size, is_full in zip(sizes, full, strict=True) if is_full),
        [sizes[view] for view in rest],
        smallest,
    )
    budgets = list(sizes)
    for view, budget in zip(rest, rest_budgets, strict=True):
        budgets[view] = budget
    return budgets


def view_budgets(settings: ReductionSettings, layout: AnyresLayout, crop_sizes: list[int]):
    """Per view (base, then the crops, of `crop_sizes` unpadded patches), the settings: a whole-image
    `num_visual_tokens` (newlines included) becomes per-view budgets, exact for every image (a crop that
    unpadding empties gets none, and None for settings: it is never reduced); one that cannot fit is
    refused."""
    views = 1 + len(crop_sizes)
    adaptive_pruning = settings.adaptive and settings.prunes  # counts come from each view's attention
    if not settings.reduces or adaptive_pruning or settings.num_visual_tokens is None:
        return [settings] * views
    smallest = 1 + (settings.summary_token and settings.prunes)
    newlines = layout.newlines
    patches = [layout.side * layout.side, *crop_sizes]
    fewest = sum(min(smallest, size) for size in patches) + newlines
    largest = sum(patches) + newlines  # every patch kept: no summary token is left to add
    if not fewest <= settings.num_visual_tokens <= largest:
        raise ReductionSettingsError(
            f"num_visual_tokens={settings.num_visual_tokens} does not fit an image of {views} view{'s' * (views > 1)} "
            f"({newlines} newline token(s)): choose between {fewest} and {largest}"
        )
    budgets = split_budget(settings.num_visual_tokens - newlines, patches, smallest)
    return [settings.replace(num_visual_tokens=budget) if budget else None for budget in budgets]


def check_anyres_inputs(
    pixel_values, image_sizes, config, model_name: str, crops: list[bool] | None = None
) -> list[AnyresLayout]:
    """[images, views, 3, size, size] pixels (padded with unused views, as the processor makes them) and one
    (height, width) per image; per image its layout (`crops[i]` False: its base view alone), whose view
    count must fit in `pixel_values`."""
    vision = config.vision_config
    expected = (vision.num_channels, vision.image_size, vision.image_size)
    if (
        not isinstance(pixel_values, torch.Tensor)
        or pixel_values.dim() != 5
        or tuple(pixel_values.shape[2:]) != expected
    ):
        raise VisualInputError(
            f"pixel_values must be [num_images, num_views, {expected[0]}, {expected[1]}, {expected[2]}] for "
            f"{model_name} (the base view and the crops of each image), got {described_shape(pixel_values)}; "
            "preprocess images with the model's image processor"
        )
    if image_sizes is None:
        raise VisualInputError(
            f"{model_name} needs image_sizes with pixel_values (the processor returns both): each image's "
            "(height, width) decides its crop grid"
        )
    sizes = torch.as_tensor(image_sizes)
    if sizes.dim() != 2 or sizes.shape != (pixel_values.shape[0], 2) or bool((sizes <= 0).any()):
        raise VisualInputError(
            f"image_sizes must hold one positive (height, width) per image: shape ({pixel_values.shape[0]}, 2) "
            f"for pixel_values of {pixel_values.shape[0]} image(s), got {tuple(sizes.shape)}"
        )
    problem = grid_pinpoints_problem(config.image_grid_pinpoints, vision.image_size)
    if problem is not None:
        raise VisualInputError(f"The model's config is broken: {problem}")
    side = vision.image_size // vision.patch_size
    crops = [True] * len(sizes) if crops is None else crops
    layouts = [
        anyres_layout(size.tolist(), config.image_grid_pinpoints, vision.image_size, side)
        if split
        else AnyresLayout.base_only(side)
        for size, split in zip(sizes, crops, strict=True)
    ]
    # the processor pads each image's views with all-zero ones up to the batch's most
    blank = (pixel_values.flatten(2) == 0).all(-1)  # [images, views]
    for index, layout in enumerate(layouts):
        views = int((~blank[index]).nonzero().max()) + 1 if bool((~blank[index]).any()) else 0
        if layout.num_views > pixel_values.shape[1] or (split_views(layout) and views != layout.num_views):
            held = (
                f"{pixel_values.shape[1]} per image"
                if layout.num_views > pixel_values.shape[1]
                else f"{views}"
            )
            raise VisualInputError(
                f"Image {index} of size {tuple(sizes[index].tolist())} has {layout.num_views} views (the base "
                f"view and a {layout.grid_rows}x{layout.grid_cols} grid of crops) but pixel_values holds "
                f"{held}: image_sizes and pixel_values do not come from the same processor call (or are in "
                "another order)"
            )
    raise_if_not_finite(
        pixel_values, "pixel_values contain NaN or inf; check the image loading and preprocessing"
    )
    return layouts


def split_views(layout: AnyresLayout) -> bool:
    """Whether the image is seen as a base view and crops (not its base view alone, whose crops the processor
    made but the model leaves unread)."""
    return not layout.base_newline


def used_views(pixel_values: torch.Tensor, layouts: list[AnyresLayout]) -> torch.Tensor:
    """[total views, 3, size, size]: each image's base view and crops, without the processor's padding views."""
    return torch.cat(
        [pixels[: layout.num_views] for pixels, layout in zip(pixel_values, layouts, strict=True)]
    )


class AnyresModelMixin:
    """The encode and reduce stages of AnyRes images, and the layout of their reduced views (see the module
    docstring); a model with `vision_tower`, `image_newline` and the `PruMergeModelMixin` stages that names
    `model_name` and implements `stock_image_length`."""

    model_name: str  # the family's name in messages ("LLaVA-NeXT")

    def stock_image_length(self, layout: AnyresLayout) -> int:
        """How many tokens the stock model feeds the LLM for an image of this layout."""
        raise NotImplementedError(f"{type(self).__name__} must implement stock_image_length")

    def image_layouts(self, pixel_values, image_sizes, batch_num_images=None) -> list[AnyresLayout]:
        """Per image its layout, the inputs checked (`check_anyres_inputs`); every image is split into crops,
        unless the architecture overrides this."""
        return check_anyres_inputs(pixel_values, image_sizes, self.config, self.model_name)

    def encode_views(
        self, pixel_values, layouts, vision_feature_layer, vision_feature_select_strategy, reduction
    ):
        """Every image's views (base first, then its crops) through the partial tower as one batch."""
        feature_layer, keep_class_token, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        views = used_views(pixel_values, layouts)
        return encode_patches(self.vision_tower, views, feature_layer, keep_class_token, settings), settings

    def reduce_each_view(
        self, encoded: EncodedPatches, first: int, layout: AnyresLayout, settings: ReductionSettings
    ) -> list[tuple[ReducedTokens | None, torch.Tensor | None]]:
        """One image's views through the reducer, each with its own settings (`view_budgets`): the base view
        whole, each crop over the patches unpadding keeps. Per view, the reducer's output (indices local to
        the patches it saw; None for a crop of padding only) and those patches (None for the base view: all)."""
        crops = [layout.crop_patches(crop) for crop in range(layout.grid_rows * layout.grid_cols)]
        per_view = view_budgets(settings, layout, [len(patches) for patches in crops])
        views = [(encoded.select(torch.tensor([first])).reduce(per_view[0]), None)]
        for crop, (patches, crop_settings) in enumerate(zip(crops, per_view[1:], strict=True)):
            if len(patches) == 0:  # a crop of padding only: stock drops all its patches too
                views.append((None, patches))
                continue
            views.append((encoded.subset(first + 1 + crop, patches).reduce(crop_settings), patches))
        return views

    def reduce_views(
        self, encoded: EncodedPatches, first: int, layout: AnyresLayout, settings: ReductionSettings
    ):
        """One image's views reduced (see `reduce_each_view`). Returns per view (tokens, kept local patch
        indices)."""
        reduced = []
        for tokens, patches in self.reduce_each_view(encoded, first, layout, settings):
            if tokens is None:
                reduced.append((encoded.features.new_zeros(0, encoded.features.shape[-1]), patches))
            elif patches is None:
                reduced.append((tokens.features[0], tokens.centers[0]))
            else:
                reduced.append((tokens.features[0], patches[tokens.centers[0]]))
        return reduced

    def reduce_images(
        self, encoded: EncodedPatches, layouts: list[AnyresLayout], settings: ReductionSettings
    ) -> ReducedViews:
        """The reducer's part: every image's views reduced (see `reduce_views`), or all kept without reduction."""
        if not settings.reduces:
            lengths = [self.stock_image_length(layout) for layout in layouts]
            return ReducedViews(layouts, None, encoded.reduce(settings), lengths)
        views, first = [], 0
        for layout in layouts:
            views.append(self.reduce_views(encoded, first, layout, settings))
            first += layout.num_views
        return ReducedViews(layouts, views)

    def lay_out(self, projected: list[torch.Tensor], kept: list[torch.Tensor], layout: AnyresLayout):
        """One image's projected view tokens in stock's order: the base view (and its newline, for a lone base
        view), then per row of crops its kept tokens in the raster order of the unpadded map, its summary
        tokens, and an `image_newline`. Returns ([n, hidden] tokens, [m, 2] (view, patch) of the kept tokens
        in that order)."""
        newline = self.image_newline[None].to(projected[0])
        pieces, centers = [projected[0]], [torch.stack([torch.zeros_like(kept[0]), kept[0]], dim=-1)]
        if layout.base_newline:
            pieces.append(newline)
        row_width = layout.grid_cols * layout.side  # patches per row of the crop map
        for grid_row in range(layout.grid_rows):
            views = range(1 + grid_row * layout.grid_cols, 1 + (grid_row + 1) * layout.grid_cols)
            positions = torch.cat(
                [(kept[v] // layout.side) * row_width + ((v - 1) % layout.grid_cols) * layout.side + kept[v] % layout.side
                 for v in views]
            )  # fmt: skip
            order = positions.argsort()
            pieces.append(torch.cat([projected[v][: len(kept[v])] for v in views])[order])
            pieces += [projected[v][len(kept[v]) :] for v in views]  # the summary tokens
            pieces.append(newline)
            view_of = torch.cat([torch.full_like(kept[v], v) for v in views])
            centers.append(torch.stack([view_of, torch.cat([kept[v] for v in views])], dim=-1)[order])
        return torch.cat(pieces), torch.cat(centers)

    def lay_out_images(self, reduced: ReducedViews) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every image's reduced views projected and laid out (see `lay_out`): per image its [n, hidden] tokens
        and the (view, patch) of its kept tokens."""
        features, centers = [], []
        for layout, image_views in zip(reduced.layouts, reduced.views, strict=True):
            tokens = [view_tokens for view_tokens, _ in image_views]
            projected = self.multi_modal_projector(torch.cat(tokens)).split([len(t) for t in tokens])
            image_tokens, image_centers = self.lay_out(
                list(projected), [patches for _, patches in image_views], layout
            )
            features.append(image_tokens)
            centers.append(image_centers)
        return features, centers
