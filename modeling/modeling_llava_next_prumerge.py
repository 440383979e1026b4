# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""LLaVA-NeXT (AnyRes) whose language model sees only the PruMerge-reduced visual tokens.

LLaVA-NeXT splits an image into a base view (the whole image at the tower's resolution) and a grid of
high-resolution crops; stock feeds the LLM the base view's patches, then the crops' patches as one
map in raster order, with the padding that made the image fit the grid removed ("unpadded") and an
`image_newline` token closing every row of patches. Each view keeps CLIP's [CLS] token, so PruMerge
applies per view with the view's own [CLS] attention:
- the base view is reduced as a LLaVA-1.5 image (tokens in the order the settings ask for);
- a crop is reduced over its patches that survive unpadding only (padding is neither kept nor merged);
- the crops' kept tokens are laid out in stock's order, the raster order of the unpadded map, and one
  `image_newline` closes each row of crops (it stands where stock's last newline of those patch rows
  stands), after that row's summary tokens. The reduced sequence is thus stock's sequence with tokens
  left out: what the model learned about order and row ends still holds, where a layout per crop or
  a merged whole map would show it sequences it never saw.
Budgets: adaptive per view, or `num_visual_tokens` for the whole image (newlines included), shared by
the views in proportion to their (unpadded) patches.

Modifications to the stock classes, beside the shared parts (`modeling_prumerge`):
- `LlavaNextPruMergeModel.visual_tokens`: AnyRes views -> partial CLIP -> per-view reducer -> layout.
- `get_image_features`: as stock, with the reduced, laid-out tokens per image as `pooler_output`.
- `forward` (both classes): the stock signatures, delegating to the shared forward.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextCausalLMOutputWithPast,
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    LlavaNextModelOutputWithPast,
    LlavaNextPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_llava_next_prumerge import LlavaNextPruMergeConfig
from .compaction import VisualTokens
from .errors import NonFiniteError, ReductionSettingsError, VisualInputError
from .modeling_prumerge import (
    CompactedModelOutputFields,
    CompactionOutputFields,
    PruMergeForConditionalGenerationMixin,
    PruMergeModelMixin,
    visual_features_output,
)
from .reduction_settings import ReductionSettings
from .runtime_compat import declare_cache_argument, share_checkpoint_layout
from .token_reduction import ReducedTokens
from .vision_encoding import EncodedPatches, encode_patches, patches_from_hidden_states

# llava-hf LLaVA-NeXT checkpoints load unchanged: their weight names map as for stock LLaVA-NeXT.
share_checkpoint_layout("llava_next_prumerge", "llava_next", {"LlavaNextPruMergeModel": "LlavaNextModel"})


@dataclass
class LlavaNextPruMergeModelOutputWithPast(CompactedModelOutputFields, LlavaNextModelOutputWithPast):
    """[`LlavaNextModelOutputWithPast`] plus the compaction fields; `visual_token_centers` rows are (view, patch)."""


@dataclass
class LlavaNextPruMergeCausalLMOutputWithPast(CompactionOutputFields, LlavaNextCausalLMOutputWithPast):
    """[`LlavaNextCausalLMOutputWithPast`] plus the compaction fields: `logits` has the compacted length."""


@dataclass(frozen=True)
class AnyresLayout:
    """Where an image's crops sit: a grid of crops, each `side` x `side` patches, and the window of the
    whole crop map that unpadding keeps (rows [top, bottom), columns [left, right))."""

    grid_rows: int
    grid_cols: int
    side: int
    top: int
    bottom: int
    left: int
    right: int

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

    @property
    def num_tokens(self) -> list[int]:
        """Per image, the tokens the LLM gets: its views' tokens and its `image_newline` tokens."""
        if self.views is None:
            return [layout.side * layout.side + layout.stock_length for layout in self.layouts]
        return [
            sum(len(tokens) for tokens, _ in views) + layout.grid_rows
            for views, layout in zip(self.views, self.layouts, strict=True)
        ]


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
    """`total` tokens shared by views of `sizes` patches, in proportion to them (largest remainder), each
    view at least `smallest`."""
    spare = total - smallest * len(sizes)
    shares = [spare * size / sum(sizes) for size in sizes]
    budgets = [smallest + int(share) for share in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda view: (int(shares[view]) - shares[view], view))
    for view in by_remainder[: total - sum(budgets)]:
        budgets[view] += 1
    return budgets


def view_budgets(settings: ReductionSettings, layout: AnyresLayout, crop_sizes: list[int]):
    """Per view (base, then the crops, of `crop_sizes` unpadded patches), the settings: a whole-image
    `num_visual_tokens` (newlines included) becomes per-view budgets; one that cannot fit is refused."""
    views = 1 + len(crop_sizes)
    adaptive_pruning = settings.adaptive and settings.prunes  # counts come from each view's attention
    if not settings.reduces or adaptive_pruning or settings.num_visual_tokens is None:
        return [settings] * views
    smallest = 1 + (settings.summary_token and settings.prunes)
    newlines = layout.grid_rows
    patches = [layout.side * layout.side, *crop_sizes]
    largest = sum(patches) + newlines  # every patch kept: no summary token is left to add
    if not smallest * views + newlines <= settings.num_visual_tokens <= largest:
        raise ReductionSettingsError(
            f"num_visual_tokens={settings.num_visual_tokens} does not fit an image of {views} views "
            f"({newlines} newline token(s)): choose between {smallest * views + newlines} and {largest}"
        )
    budgets = split_budget(settings.num_visual_tokens - newlines, patches, smallest)
    return [settings.replace(num_visual_tokens=budget) for budget in budgets]


def check_anyres_inputs(pixel_values, image_sizes, config) -> list[AnyresLayout]:
    """[images, views, 3, size, size] pixels (padded with unused views, as the processor makes them) and one
    (height, width) per image; per image its layout, whose view count must fit in `pixel_values`."""
    vision = config.vision_config
    expected = (vision.num_channels, vision.image_size, vision.image_size)
    if (
        not isinstance(pixel_values, torch.Tensor)
        or pixel_values.dim() != 5
        or tuple(pixel_values.shape[2:]) != expected
    ):
        shape = (
            tuple(pixel_values.shape)
            if isinstance(pixel_values, torch.Tensor)
            else type(pixel_values).__name__
        )
        raise VisualInputError(
            f"pixel_values must be [num_images, num_views, {expected[0]}, {expected[1]}, {expected[2]}] for "
            f"LLaVA-NeXT (the base view and the crops of each image), got {shape}; preprocess images with the "
            "model's LlavaNextImageProcessor"
        )
    if image_sizes is None:
        raise VisualInputError(
            "LLaVA-NeXT needs image_sizes with pixel_values (the processor returns both): each image's "
            "(height, width) decides its crop grid"
        )
    sizes = torch.as_tensor(image_sizes)
    if sizes.dim() != 2 or sizes.shape != (pixel_values.shape[0], 2) or bool((sizes <= 0).any()):
        raise VisualInputError(
            f"image_sizes must hold one positive (height, width) per image: shape ({pixel_values.shape[0]}, 2) "
            f"for pixel_values of {pixel_values.shape[0]} image(s), got {tuple(sizes.shape)}"
        )
    side = vision.image_size // vision.patch_size
    layouts = [
        anyres_layout(size.tolist(), config.image_grid_pinpoints, vision.image_size, side) for size in sizes
    ]
    for index, layout in enumerate(layouts):
        views = 1 + layout.grid_rows * layout.grid_cols
        if views > pixel_values.shape[1]:
            raise VisualInputError(
                f"Image {index} of size {tuple(sizes[index].tolist())} has {views} views (the base view and a "
                f"{layout.grid_rows}x{layout.grid_cols} grid of crops) but pixel_values holds {pixel_values.shape[1]} "
                "per image: image_sizes and pixel_values do not come from the same processor call"
            )
    if not torch.isfinite(pixel_values).all():
        raise NonFiniteError("pixel_values contain NaN or inf; check the image loading and preprocessing")
    return layouts


def used_views(pixel_values: torch.Tensor, layouts: list[AnyresLayout]) -> torch.Tensor:
    """[total views, 3, size, size]: each image's base view and crops, without the processor's padding views."""
    return torch.cat(
        [
            pixels[: 1 + layout.grid_rows * layout.grid_cols]
            for pixels, layout in zip(pixel_values, layouts, strict=True)
        ]
    )


class LlavaNextPruMergeModel(PruMergeModelMixin, LlavaNextModel):
    """[`LlavaNextModel`] that feeds the language model the PruMerge-reduced tokens of every AnyRes view."""

    config_class = LlavaNextPruMergeConfig

    def encode_views(
        self, pixel_values, layouts, vision_feature_layer, vision_feature_select_strategy, reduction
    ):
        """Every image's views (base first, then its crops) through the partial tower as one batch."""
        feature_layer, keep_class_token, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        views = used_views(pixel_values, layouts)
        return encode_patches(self.vision_tower, views, feature_layer, keep_class_token, settings), settings

    def view_settings(self, settings: ReductionSettings, layout: AnyresLayout, crop_sizes: list[int]):
        """Per view (base, then crops), the settings: see `view_budgets`."""
        return view_budgets(settings, layout, crop_sizes)

    def reduce_each_view(
        self, encoded: EncodedPatches, first: int, layout: AnyresLayout, settings: ReductionSettings
    ) -> list[tuple[ReducedTokens | None, torch.Tensor | None]]:
        """One image's views through the reducer, each with its own settings (`view_budgets`): the base view
        whole, each crop over the patches unpadding keeps. Per view, the reducer's output (indices local to
        the patches it saw; None for a crop of padding only) and those patches (None for the base view: all)."""
        crops = [layout.crop_patches(crop) for crop in range(layout.grid_rows * layout.grid_cols)]
        per_view = self.view_settings(settings, layout, [len(patches) for patches in crops])
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

    def lay_out(self, projected: list[torch.Tensor], kept: list[torch.Tensor], layout: AnyresLayout):
        """One image's projected view tokens in stock's order: the base view, then per row of crops its kept
        tokens in the raster order of the unpadded map, its summary tokens, and an `image_newline`.
        Returns ([n, hidden] tokens, [m, 2] (view, patch) of the kept tokens in that order)."""
        newline = self.image_newline[None].to(projected[0])
        pieces, centers = [projected[0]], [torch.stack([torch.zeros_like(kept[0]), kept[0]], dim=-1)]
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

    def visual_tokens(
        self,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> list[VisualTokens]:
        """Implemented: per image, its views' reduced tokens, projected and laid out as stock orders them."""
        if pixel_values is None:
            return []
        layouts = check_anyres_inputs(pixel_values, image_sizes, self.config)
        encoded, settings = self.encode_views(
            pixel_values, layouts, vision_feature_layer, vision_feature_select_strategy, reduction
        )
        return [self.tokens_of_views(encoded, layouts, image_sizes, settings, vision_feature_select_strategy)]

    def tokens_of_views(self, encoded, layouts, image_sizes, settings, strategy) -> VisualTokens:
        """The images' tokens from their encoded views: reduced, projected and laid out."""
        return self.anyres_tokens(self.reduce_images(encoded, layouts, settings), image_sizes, strategy)

    def reduce_images(
        self, encoded: EncodedPatches, layouts: list[AnyresLayout], settings: ReductionSettings
    ) -> ReducedViews:
        """The reducer's part: every image's views reduced (see `reduce_views`), or all kept without reduction."""
        if not settings.reduces:
            return ReducedViews(layouts, None, encoded.reduce(settings))
        views, first = [], 0
        for layout in layouts:
            views.append(self.reduce_views(encoded, first, layout, settings))
            first += 1 + layout.grid_rows * layout.grid_cols
        return ReducedViews(layouts, views)

    def anyres_tokens(self, reduced: ReducedViews, image_sizes, strategy: str | None = None) -> VisualTokens:
        """Reduced views projected and laid out per image, ready for compaction: stock's packing without
        reduction, else `lay_out`."""
        layouts = reduced.layouts
        expanded = [
            layout.side * layout.side + layout.stock_length for layout in layouts
        ]  # base view, then crops
        if reduced.views is None:
            views = [1 + layout.grid_rows * layout.grid_cols for layout in layouts]
            projected = self.multi_modal_projector(torch.stack(reduced.unreduced.features))
            features, _ = self.pack_image_features(
                list(projected.split(views)), image_sizes,
                strategy or self.config.vision_feature_select_strategy, image_newline=self.image_newline,
            )  # fmt: skip
            return VisualTokens(
                "image", self.config.image_token_id, list(features), expanded, [None] * len(features)
            )
        features, centers = [], []
        for layout, image_views in zip(layouts, reduced.views, strict=True):
            tokens = [view_tokens for view_tokens, _ in image_views]
            projected = self.multi_modal_projector(torch.cat(tokens)).split([len(t) for t in tokens])
            image_tokens, image_centers = self.lay_out(
                list(projected), [patches for _, patches in image_views], layout
            )
            features.append(image_tokens)
            centers.append(image_centers)
        return VisualTokens("image", self.config.image_token_id, features, expanded, centers)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """Overridden: as stock (the whole tower runs on every view, its outputs are returned), with the reduced,
        laid-out tokens, one [n_i, hidden] tensor per image, as `pooler_output`; 4.x: that list alone."""
        layouts = check_anyres_inputs(pixel_values, image_sizes, self.config)
        feature_layer, keep_class_token, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        outputs, hidden_states = self.run_whole_tower(
            self.vision_tower, used_views(pixel_values, layouts), kwargs
        )
        encoded = patches_from_hidden_states(
            self.vision_tower, hidden_states, feature_layer, keep_class_token, settings
        )
        tokens = self.tokens_of_views(encoded, layouts, image_sizes, settings, vision_feature_select_strategy)
        return visual_features_output(tokens, **outputs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaNextPruMergeModelOutputWithPast:
        """Overridden: with images (raw, or features in `mm_encoder_outputs`), the language model runs on the
        compacted prompt; `labels` (optional) come back aligned with it."""
        visual_inputs = {
            "pixel_values": pixel_values,
            "image_sizes": image_sizes,
            "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "reduction": reduction,
        }
        return self.compacted_forward(
            LlavaNextPruMergeModelOutputWithPast, input_ids, attention_mask, position_ids, past_key_values,
            inputs_embeds, labels, mm_encoder_outputs, visual_inputs, kwargs,
        )  # fmt: skip


class LlavaNextPruMergeForConditionalGeneration(
    PruMergeForConditionalGenerationMixin, LlavaNextForConditionalGeneration, GenerationMixin
):
    """[`LlavaNextForConditionalGeneration`] whose LLM sees only the PruMerge-reduced tokens of every view."""

    config_class = LlavaNextPruMergeConfig
    visual_input_names = ("pixel_values",)
    visual_option_names = ("image_sizes",)
    # The reducer calls into the reduction layer's submodules, so vision layers must stay whole.
    _no_split_modules = [
        "CLIPEncoderLayer",
        "CLIPVisionEmbeddings",
        "LlavaNextMultiModalProjector",
        "LlamaDecoderLayer",
    ]

    def __init__(self, config: LlavaNextPruMergeConfig):
        LlavaNextPreTrainedModel.__init__(self, config)  # the stock __init__, with the PruMerge base model
        self.model = LlavaNextPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ):
        """The base model's (see `LlavaNextPruMergeModel.get_image_features`)."""
        return self.model.get_image_features(pixel_values, image_sizes, **kwargs)

    @can_return_tuple
    @declare_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        reduction: ReductionSettings | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaNextPruMergeCausalLMOutputWithPast:
        """Overridden: with images, the base model compacts the sequence (and `labels`); `logits` has the
        compacted length."""
        model_inputs = {
            "input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes,
            "attention_mask": attention_mask, "position_ids": position_ids, "past_key_values": past_key_values,
            "inputs_embeds": inputs_embeds, "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "mm_encoder_outputs": mm_encoder_outputs, "reduction": reduction,
        }  # fmt: skip
        return self.head_forward(
            LlavaNextPruMergeCausalLMOutputWithPast, labels, logits_to_keep, model_inputs, kwargs
        )


__all__ = ["LlavaNextPruMergeForConditionalGeneration", "LlavaNextPruMergeModel"]
