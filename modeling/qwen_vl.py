# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""What Qwen2-VL and Qwen2.5-VL share with PruMerge: reduced merged tokens placed by 3-D rotary positions.

Stock Qwen-VL places each visual token by mRoPE: (time, row, column) of its place in the merged grid,
offset by the text before it; text after an image resumes past the image's largest side
(`get_rope_index`). PruMerge keeps every kept token at the position of its place and the text at its
stock positions, so the language model sees the image where it was and nothing moves: positions are
computed for the uncompacted prompt, then each token takes that of its place (`compaction`'s multi-row
positions). A token that merged others keeps its center's place; the summary token of a sequence (an
image, or a video's frame group) takes the place of the sequence's last merged token. Decoding
continues past the largest position, as stock does: `rope_deltas` is that position + 1 - the compacted
length.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .compaction import VisualTokens, widened_prompt
from .errors import ReductionSettingsError, VisualInputError
from .frames import frame_settings
from .modeling_prumerge import visual_features_output
from .qwen_vision import check_grid, encode_merged_tokens
from .reduction_settings import ReductionSettings
from .runtime_compat import (
    CACHE_ARGUMENT_NAMES,
    ENCODER_OUTPUTS_IN_OUTPUTS,
    GENERATE_BUILDS_POSITIONS,
    IMAGE_FEATURES_AS_OUTPUT,
    cache_length,
)

GRIDS = {"image": "image_grid_thw", "video": "video_grid_thw"}


@dataclass
class ProjectedTokensFields:
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(image tokens, hidden_size)`, *optional*): the image tokens
        the language model saw (transformers 4.x's name, as its LLaVA-family outputs report them).
    video_hidden_states (`torch.FloatTensor` of shape `(video tokens, hidden_size)`, *optional*): the same for videos.
    """

    image_hidden_states: torch.FloatTensor | None = None
    video_hidden_states: torch.FloatTensor | None = None


# transformers 4.x's Qwen-VL outputs have no field for the visual tokens; 5.x's report them in `image_outputs`.
PROJECTED_TOKENS_FIELDS = () if ENCODER_OUTPUTS_IN_OUTPUTS else (ProjectedTokensFields,)


def check_budget(settings: ReductionSettings, count: int, modality: str) -> None:
    """A fixed budget larger than an image's (a frame group's) merged tokens is refused: native-resolution
    images differ in size, and a budget cannot add tokens the image does not have."""
    fixed = settings.reduces and (not settings.adaptive or not settings.prunes)
    if fixed and settings.num_visual_tokens is not None and settings.num_visual_tokens > count:
        where = "an image" if modality == "image" else "a video frame group"
        raise ReductionSettingsError(
            f"A budget of {settings.num_visual_tokens} tokens exceeds the {count} merged tokens of {where} "
            "here; choose a smaller budget, or larger images (the processor's min_pixels)"
        )


def reduce_merged_tokens(
    modality: str, merged, grid: torch.Tensor, settings: ReductionSettings, merge_size: int, token_id: int
) -> VisualTokens:
    """One modality's items from the tower's merged tokens (`MergedTokens`, items of `grid` [items, 3]): per
    sequence reduced (its settings: a video's `num_video_tokens` split over its frame groups), gathered per item
    with each token's place: a kept token's own, a summary token its sequence's last."""
    features, centers, places, sequence = [], [], [], 0
    for groups in merged.groups:
        per_group = frame_settings(settings, groups, class_token=False) if modality == "video" else [settings]
        item_features, item_centers, item_places, offset = [], [], [], 0
        for group_settings in per_group:
            count = int(merged.features[sequence].shape[0])
            check_budget(group_settings, count, modality)
            reduced = merged.sequence(sequence).reduce(group_settings)
            tokens, kept = reduced.features[0], reduced.centers[0]
            summary = torch.full((len(tokens) - len(kept),), count - 1, dtype=torch.long, device=kept.device)
            item_features.append(tokens)
            item_centers.append(kept + offset)
            item_places.append(torch.cat([kept, summary]) + offset)
            offset, sequence = offset + count, sequence + 1
        features.append(torch.cat(item_features))
        centers.append(torch.cat(item_centers))
        places.append(torch.cat(item_places))
    expanded = [int(t * h * w) // merge_size**2 for t, h, w in grid.tolist()]
    return VisualTokens(modality, token_id, features, expanded, centers, places)


class QwenVLModelMixin:
    """The base model's part for Qwen-VL, listed before `PruMergeModelMixin`: merged tokens reduced per attention
    sequence, and the stock positions of the prompt carried through compaction."""

    modality_inputs = {"image": "pixel_values", "video": "pixel_values_videos"}

    def reduce_merged_tokens(self, modality: str, merged, grid: torch.Tensor, settings: ReductionSettings):
        """One modality's items from the tower's merged tokens (see `reduce_merged_tokens`)."""
        token_id = getattr(self.config, f"{modality}_token_id")
        return reduce_merged_tokens(
            modality, merged, grid, settings, self.visual.spatial_merge_size, token_id
        )

    def modality_tokens(self, modality: str, pixel_values, grid_thw, reduction=None, kwargs=None):
        """(one modality's reduced tokens, the tower's output) for its pixel values and grid."""
        grid = check_grid(pixel_values, grid_thw, self.visual, self.modality_inputs[modality])
        settings = self.reduction_settings(reduction)
        merged, output = encode_merged_tokens(
            self.visual, pixel_values, grid.to(pixel_values.device), settings, kwargs
        )
        return self.reduce_merged_tokens(modality, merged, grid, settings), output

    def visual_tokens(
        self,
        pixel_values=None,
        pixel_values_videos=None,
        image_grid_thw=None,
        video_grid_thw=None,
        reduction: ReductionSettings | None = None,
        **options,
    ) -> list[VisualTokens]:
        """Implemented: the images' and the videos' reduced tokens (`options`: the position inputs, read by
        `prompt_positions`)."""
        tokens = []
        for modality, pixels, grid in (("image", pixel_values, image_grid_thw), ("video", pixel_values_videos, video_grid_thw)):  # fmt: skip
            if pixels is not None:
                tokens.append(self.modality_tokens(modality, pixels, grid, reduction)[0])
        return tokens

    def merged_features(self, modality: str, pixel_values, grid_thw, reduction, kwargs: dict):
        """`get_image_features` / `get_video_features`: as stock (the tower's outputs), with the reduced tokens, one
        [n_i, hidden] tensor per item, as `pooler_output` (4.x: that list alone)."""
        tokens, output = self.modality_tokens(modality, pixel_values, grid_thw, reduction, kwargs)
        if not IMAGE_FEATURES_AS_OUTPUT:
            return tokens.features
        return visual_features_output(tokens, last_hidden_state=output.last_hidden_state)

    def stock_layout_prompt(
        self, visual: list[VisualTokens], input_ids, attention_mask, labels, position_ids
    ):
        """Overridden: each run widened to stock's expansion (a fixed-budget processor writes the budget, or a
        prompt one placeholder per item), as `get_rope_index` counts positions over stock's layout; a prompt whose
        positions are given (`generate`'s compacted prefill) is placed by them."""
        if input_ids is None or position_ids is not None:  # no ids: refused by `prompt_positions`
            return input_ids, attention_mask, labels
        visual, spans = self.item_spans(visual, input_ids, None, labels)
        self.padding_mask(input_ids, attention_mask)  # checks its shape
        return widened_prompt(input_ids, attention_mask, labels, visual, spans, self.padding_token_id)

    def prompt_positions(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, visual_inputs: dict
    ):
        """Overridden: without `position_ids`, stock's 3-D positions ([3, B, L]): of a prompt with visual inputs
        from its grids (`get_rope_index`, before compaction, which carries them), of tokens continuing a
        cached prompt from `rope_deltas`."""
        grids = {name: visual_inputs.get(name) for name in GRIDS.values()}
        if position_ids is not None:
            return position_ids
        if all(grid is None for grid in grids.values()):
            return self.continuation_positions(input_ids if input_ids is not None else inputs_embeds, cache)
        if input_ids is None:
            raise VisualInputError(
                "Qwen-VL places visual tokens by their ids (3-D positions from the placeholder runs): pass input_ids "
                "with visual inputs, not inputs_embeds alone"
            )
        self.check_placeholders(input_ids, grids)
        parameters = inspect.signature(self.get_rope_index).parameters
        arguments = {**grids, "attention_mask": attention_mask}
        if "second_per_grid_ts" in parameters:  # Qwen2.5-VL: the time between a video's frame groups
            arguments["second_per_grid_ts"] = visual_inputs.get("second_per_grid_ts")
        if "mm_token_type_ids" in parameters:  # transformers 5 groups tokens by these
            # derived from the ids as the processor derives them: a given one describes the prompt before widening
            arguments["mm_token_type_ids"] = (input_ids == self.config.image_token_id).int() + 2 * (
                input_ids == self.config.video_token_id
            ).int()
        positions, _ = self.get_rope_index(input_ids, **arguments)
        return positions

    def check_placeholders(self, input_ids: torch.Tensor, grids: dict) -> None:
        """The prompts hold as many placeholders of each modality as its grids make merged tokens (stock's
        position count would fail obscurely otherwise)."""
        for modality, name in GRIDS.items():
            if grids[name] is None:
                continue
            per_item = (torch.as_tensor(grids[name]).prod(-1) // self.visual.spatial_merge_size**2).tolist()
            token_id = getattr(self.config, f"{modality}_token_id")
            found = int((input_ids == token_id).sum())
            if found != sum(per_item):
                raise VisualInputError(
                    f"The prompts hold {found} {modality} placeholder tokens (id {token_id}) but the {modality}s' "
                    f"{name} make {sum(per_item)} merged tokens ({per_item} per {modality}): build the prompts "
                    f"with the processor from these {modality}s"
                )

    def continuation_positions(self, prompt: torch.Tensor, cache):
        """Positions of tokens (`prompt`: their ids or embeddings) that continue a cached prompt, as stock: past
        the prompt's largest, by `rope_deltas` ([3, B, L]); None otherwise (the language model counts)."""
        past = cache_length(cache)
        if past == 0 or getattr(self, "rope_deltas", None) is None:
            return None
        batch, length = prompt.shape[:2]
        positions = torch.arange(past, past + length, device=prompt.device).expand(batch, length)
        deltas = self.rope_deltas.to(prompt.device)
        deltas = deltas.repeat_interleave(batch // deltas.shape[0], dim=0)
        return (positions + deltas).expand(3, batch, length)

    def remember_positions(self, position_ids, attention_mask, cache) -> None:
        """Overridden: a prompt's 3-D positions (a forward from an empty cache) set `rope_deltas`: per sample, its
        largest position + 1 - the prompt's length, so that decoding continues as stock continues it. A compiled
        call is a decoding step (generate compiles only those): it keeps them without reading the cache's length."""
        if torch.compiler.is_compiling() or position_ids is None or position_ids.dim() != 3:
            return
        if cache_length(cache) > 0:
            return
        rows = position_ids[-3:]  # [3, B, L]: 5.x generate puts a text row first
        if (
            torch.is_tensor(attention_mask) and attention_mask.dim() == 2
        ):  # not compiled decoding's per-layer masks
            rows = rows.masked_fill(attention_mask[None] == 0, -1)
        self.rope_deltas = rows.amax(dim=(0, 2))[:, None] + 1 - position_ids.shape[-1]


class QwenVLForConditionalGenerationMixin:
    """The head's part for Qwen-VL, listed before `PruMergeForConditionalGenerationMixin`: `generate` places the
    compacted prompt by its carried 3-D positions."""

    visual_input_names = ("pixel_values", "pixel_values_videos")
    visual_option_names = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")
    prompt_position_ids = None  # [4, B, L'] of the prompt `generate` compacted, for its prefill

    def generation_positions(self, compact) -> dict:
        """Overridden: the compacted prompt's positions, a text row (as generate counts it) before the 3 rows of
        mRoPE; transformers 5's generate takes and extends them, 4.x's prefill gets them here
        (`prepare_inputs_for_generation`) and decodes from `rope_deltas`."""
        mask = compact.attention_mask
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        self.prompt_position_ids = torch.cat([text[None], compact.position_ids.to(text)])
        self.model.remember_positions(self.prompt_position_ids, mask, None)
        return {"position_ids": self.prompt_position_ids} if GENERATE_BUILDS_POSITIONS else {}

    def continuation_generation_positions(self, ids: torch.Tensor) -> dict:
        """Overridden: transformers 5's generate places the new tokens from the positions it is given: past the
        prompt's largest by `rope_deltas`, as the first call decoded (4.x computes the same itself)."""
        deltas = getattr(self.model, "rope_deltas", None)
        if not GENERATE_BUILDS_POSITIONS or deltas is None:
            return {}
        batch, length = ids.shape
        text = torch.arange(length, device=ids.device).expand(batch, length)
        mrope = (text + deltas.to(ids.device).repeat_interleave(batch // deltas.shape[0], dim=0)).expand(
            3, batch, length
        )
        return {"position_ids": torch.cat([text[None], mrope])}

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """Overridden: the prefill of a prompt `generate` compacted reads its carried positions (4.x's stock
        method would count them over the compacted ids; 5.x's beams would repeat them along the wrong axis). A
        prefill longer than the prompt (an assistant's candidates after it) keeps generate's extended positions."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        cache = next(
            (model_inputs[name] for name in CACHE_ARGUMENT_NAMES if model_inputs.get(name) is not None), None
        )
        prompt = self.prompt_position_ids
        if prompt is not None and cache_length(cache) == 0 and input_ids.shape[1] == prompt.shape[-1]:
            copies = input_ids.shape[0] // self.prompt_position_ids.shape[1]  # beams, returned sequences
            positions = self.prompt_position_ids.repeat_interleave(copies, dim=1)
            model_inputs["position_ids"] = positions[..., -input_ids.shape[1] :].to(input_ids.device)
        return model_inputs

    def _get_candidate_generator(self, *args, **kwargs):
        """Overridden (transformers 5): an assistant, a text model, is placed by the text row of the 4-row positions
        generate builds for Qwen-VL (its candidate generator copies them as they are, as stock's does)."""
        generator = super()._get_candidate_generator(*args, **kwargs)
        positions = getattr(generator, "assistant_kwargs", {}).get("position_ids")
        if positions is not None and positions.dim() == 3:
            generator.assistant_kwargs["position_ids"] = positions[0]
        return generator

    def generate(self, *args, **kwargs):
        """Overridden: forgets the last prompt's positions once done (see `generation_positions`)."""
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.prompt_position_ids = None
