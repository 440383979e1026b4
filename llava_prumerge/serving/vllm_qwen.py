"""Qwen2.5-VL and Qwen2-VL PruMerge as vLLM models: vLLM's models whose merged tokens go through the package's
reducer at fixed budgets, each kept token at the 3-D position the transformers model gives it.

Imported only by vLLM (the plugin registers them by name). Modifications to vLLM's
`Qwen2_5_VLForConditionalGeneration` and `Qwen2VLForConditionalGeneration`:
- `__init__`: refuses a config whose token count varies per image or video (see `budget`).
- `_process_image_input` / `_process_video_input`: the tower as stock runs it, reading the last
  full-attention block's input; its q/k score the merged tokens (`qwen_vision.merged_token_scores`), the
  reducer keeps the budget per image and per video (split over its frame groups,
  `qwen_vl.reduce_merged_tokens`). Each token carries its place in the item's grid (time, row, column:
  stock's position relative to the item) in 6 more channels, 2 per coordinate (exact in bfloat16).
- `get_mrope_input_positions`: stock's positions for a prompt whose runs hold the budget: text where stock
  puts it (after an item, past the item's extent), and each run's tokens at their item's first position.
- `embed_input_ids` / `forward`: the places come off the tokens before they are merged into the prompt, and
  each visual token's position becomes its item's first position plus its place, as the transformers
  model places it (vLLM's own pruning, EVS, recomputes positions after the encoder in its GPU runner
  only; here nothing but the model is involved).
- The multimodal processor writes the budget's placeholders per image (at most the image's merged tokens)
  and per video; the processing info counts them alike, so the scheduler reserves only those.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from vllm.distributed import tensor_model_parallel_all_gather
from vllm.model_executor.layers.linear import QKVParallelLinear
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from ..modeling.qwen_vision import MergedTokens, merged_token_scores
from ..modeling.qwen_vl import reduce_merged_tokens
from .budget import image_token_count, served_budgets, video_token_count
from .vllm_counts import videos_served

PLACE_DIGIT = (
    256  # a place's coordinate rides as (value // 256, value % 256): integers bfloat16 holds exactly
)
PLACE_CHANNELS = 6


class QwenBudgetInfoMixin:
    """Listed before vLLM's Qwen-VL processing info: images and videos counted at the config's budgets (as
    stock counts them with `token_reduction="none"`)."""

    def get_num_image_tokens(self, **kwargs) -> int:
        """Overridden: the budget, or the image's merged tokens when it has no more (it keeps them all)."""
        stock = super().get_num_image_tokens(**kwargs)
        config = self.get_hf_config()
        return min(stock, image_token_count(config)) if config.reduction_settings.reduces else stock

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts):
        """Overridden: at most the budgets of the modalities served."""
        stock = super().get_mm_max_tokens_per_item(seq_len, mm_counts)
        budgets = served_budgets(self.get_hf_config(), videos=mm_counts.get("video", 0) > 0)
        return {modality: min(count, budgets.get(modality) or count) for modality, count in stock.items()}

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts, *args, **kwargs) -> int:
        """Overridden: at most the frames whose groups the video budget has tokens for (one and a summary
        each), so that vLLM's profiling video fits it."""
        frames = super().get_num_frames_with_most_features(seq_len, mm_counts, *args, **kwargs)
        config = self.get_hf_config()
        settings = config.reduction_settings
        if not settings.reduces or settings.num_video_tokens is None:  # stock's, or videos are not served
            return frames
        groups = max(1, settings.num_video_tokens // (1 + settings.summary_token))
        return min(frames, groups * config.vision_config.temporal_patch_size)


class QwenBudgetProcessorMixin:
    """Listed before vLLM's Qwen-VL multimodal processor: each run written at its item's budget."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """Overridden to reduce: stock's replacements cut to the budget (an image: at most its merged tokens)."""
        stock = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        config = self.info.get_hf_config()
        if not config.reduction_settings.reduces:
            return stock
        return [
            PromptReplacement(
                modality=update.modality,
                target=update.target,
                replacement=partial(_cut, stock=update.replacement, config=config, modality=update.modality),
            )
            for update in stock
        ]


def _cut(item_idx: int, stock, config, modality: str) -> list[int]:
    """An item's run of stock's placeholders cut to its modality's budget."""
    budget = image_token_count(config) if modality == "image" else video_token_count(config)
    return stock(item_idx)[:budget]


class QwenVllmMixin:
    """Listed before a vLLM Qwen-VL model: its images and videos reduced by the transformers model's stages
    on vLLM's tower, each kept token carrying its place for vLLM's pruned-token positions."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        """The vLLM model's, after refusing a config whose counts vary (before any weight is allocated)."""
        served_budgets(vllm_config.model_config.hf_config, videos_served(vllm_config))
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.settings = self.config.reduction_settings
        self.is_multimodal_pruning_enabled = False  # stock's own pruning step (Qwen2.5-VL's EVS) stays off
        self.step_places = None  # (is_multimodal [L], places [m, 3]) of the step `embed_input_ids` prepared

    def _process_image_input(self, image_input) -> tuple[torch.Tensor, ...]:
        """Overridden to reduce: per image its reduced tokens with their places, [count, hidden + 6]."""
        if not self.settings.reduces:
            return super()._process_image_input(image_input)
        return self.reduced_items("image", image_input)

    def _process_video_input(self, video_input) -> tuple[torch.Tensor, ...]:
        """Overridden to reduce: per video its reduced tokens with their places, [num_video_tokens, hidden + 6]."""
        if not self.settings.reduces:
            return super()._process_video_input(video_input)
        return self.reduced_items("video", video_input)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        """Overridden: the visual tokens' places kept for this step's `forward`, their features merged as stock
        merges them."""
        self.step_places = None
        if not self.settings.reduces or multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
        digits = torch.cat([item[:, -PLACE_CHANNELS:] for item in multimodal_embeddings]).round().long()
        self.step_places = (is_multimodal, digits[:, 0::2] * PLACE_DIGIT + digits[:, 1::2])  # [m, 3]
        features = [item[:, :-PLACE_CHANNELS] for item in multimodal_embeddings]
        return super().embed_input_ids(input_ids, features, is_multimodal=is_multimodal)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        """Overridden: each visual token of the step at its item's first position (where its run stands, see
        `get_mrope_input_positions`) plus its place; the runner rebuilds the positions every step."""
        if self.step_places is not None:
            is_multimodal, places = self.step_places
            self.step_places = None
            step = positions[:, : is_multimodal.shape[0]]  # [3, L] (the batch may be padded past it)
            step[:, is_multimodal] += places.T.to(positions)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def reduced_items(self, modality: str, inputs) -> tuple[torch.Tensor, ...]:
        """One modality's items: the tower, the reducer, and each token's place in the item's grid (stock's
        (time, row, column) relative to the item, `compute_mrope_for_media`), as digits (`PLACE_DIGIT`)."""
        if inputs["type"] != ("pixel_values" if modality == "image" else "pixel_values_videos"):
            raise ValueError(
                f"PruMerge reduces {modality}s from their pixels; precomputed {modality} embeddings cannot be "
                "reduced: pass the pixels"
            )
        grid = inputs[f"{modality}_grid_thw"]
        pixels = inputs["pixel_values" if modality == "image" else "pixel_values_videos"]
        merged = self.merged_tokens(pixels, grid)
        merge = self.visual.spatial_merge_size
        token_id = getattr(self.config, f"{modality}_token_id")
        tokens = reduce_merged_tokens(modality, merged, grid.cpu(), self.settings, merge, token_id)
        seconds = inputs.get("second_per_grid_ts") if modality == "video" else None
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        items = []
        for index, (features, places) in enumerate(zip(tokens.features, tokens.places, strict=True)):
            scale = tokens_per_second * float(seconds[index]) if seconds is not None else 1.0
            where = compute_mrope_for_media(grid[index].cpu(), merge, video_second_per_grid=scale)  # [n, 4]
            kept = where[places.cpu(), :3]  # [count, 3]: (time, row, column)
            digits = torch.stack([kept // PLACE_DIGIT, kept % PLACE_DIGIT], dim=-1).flatten(1)  # [count, 6]
            items.append(torch.cat([features, digits.to(features)], dim=1))
        return tuple(items)

    def merged_tokens(self, pixel_values: torch.Tensor, grid: torch.Tensor) -> MergedTokens:
        """The tower's merged tokens per attention sequence (an image, or a video's frame group) and, when
        reducing, their importance and keys from the last full-attention block (its input read as it runs)."""
        visual, grid_list = self.visual, grid.tolist()
        full = getattr(visual, "fullatt_block_indexes", None)  # Qwen2-VL: every block attends fully
        block = visual.blocks[full[-1] if full else len(visual.blocks) - 1]
        captured, forward = {}, block.forward

        def capturing(x, *args, **kwargs):  # the block's input, its sequences and rotary tables
            captured.update(hidden=x, **kwargs)
            return forward(x, *args, **kwargs)

        # vLLM's blocks call `forward` from their own `__call__` (compilation wrappers), past module hooks
        if self.settings.reduces:
            block.forward = capturing
        try:
            merged = visual(pixel_values, grid_thw=grid_list)  # [merged tokens, hidden], raster order
        finally:
            block.__dict__.pop("forward", None)
        unit = visual.spatial_merge_size**2
        per_sequence = [h * w // unit for t, h, w in grid_list for _ in range(t)]
        tokens = MergedTokens(list(merged.split(per_sequence)), [t for t, _, _ in grid_list])
        if self.settings.reduces:
            window = visual.prepare_encoder_metadata(grid_list).get("window_index") if full else None
            importance, keys = self._block_scores(block, captured, window, unit)
            tokens.importance, tokens.keys = (
                list(importance.split(per_sequence)),
                list(keys.split(per_sequence)),
            )
        return tokens

    def _block_scores(self, block, captured: dict, window_order, unit: int):
        """(importance, keys) of the merged tokens from the block's captured input [patches, 1, C]."""
        attention = block.attn
        hidden = captured["hidden"]
        queries, keys = _queries_and_keys(attention, attention.qkv(block.norm1(hidden))[0])
        patches, head_size = hidden.shape[0], attention.hidden_size_per_attention_head
        queries, keys = (x.reshape(1, patches, -1, head_size) for x in (queries, keys))  # [1, s, heads, hd]
        rotated = attention.apply_rotary_emb(
            torch.cat([queries, keys]), captured["rotary_pos_emb_cos"], captured["rotary_pos_emb_sin"]
        )  # [2, s, heads, hd]
        cu_seqlens = captured["cu_seqlens"].tolist()
        return merged_token_scores(
            rotated[0], rotated[1], keys[0], cu_seqlens, window_order, self.settings, unit
        )

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features):
        """Overridden: positions of a prompt whose runs hold the budget: text where stock puts it (after an item,
        past the item's extent); a run's tokens at the item's first position until the encoder has chosen them
        (`forward` adds each one's place). Returns ([3, N] positions, delta: decoding continues past the
        prompt's largest position, its last text token's). Stock's without reduction."""
        if not self.settings.reduces:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        pieces, start, next_position = [], 0, 0
        features = sorted(mm_features, key=lambda feature: feature.mm_position.offset)
        for feature, (offset, frames, rows, columns, t_factor) in zip(
            features, self.iter_mm_grid_thw(mm_features), strict=True
        ):
            text = offset - start
            pieces.append(np.broadcast_to(np.arange(text), (3, text)) + next_position)
            base = next_position + text
            run = feature.mm_position.length
            pieces.append(np.full((3, run), base))
            next_position = base + max(int((frames - 1) * t_factor), rows - 1, columns - 1) + 1
            start = offset + run
        text = len(input_tokens) - start
        pieces.append(np.broadcast_to(np.arange(text), (3, text)) + next_position)
        positions = np.concatenate(pieces, axis=1)
        return torch.from_numpy(positions), int(positions.max() + 1 - len(input_tokens))


def _queries_and_keys(attention, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A vLLM Qwen-VL vision attention's q and k [s, 1, heads * hd] over all heads, from its `qkv` output.
    Under tensor parallelism Qwen2.5-VL's fused projection gives each rank its heads' q, k and v; Qwen2-VL's
    gives each rank a slice of the whole [q, k, v]."""
    if attention.tp_size == 1:
        queries, keys, _ = qkv.chunk(3, dim=-1)
        return queries, keys
    if isinstance(attention.qkv, QKVParallelLinear):
        queries, keys, _ = qkv.chunk(3, dim=-1)
        gather = partial(tensor_model_parallel_all_gather, dim=-1)
        return gather(queries.contiguous()), gather(keys.contiguous())
    queries, keys, _ = tensor_model_parallel_all_gather(qkv.contiguous(), dim=-1).chunk(3, dim=-1)
    return queries, keys


class Qwen2_5_VLPruMergeProcessingInfo(QwenBudgetInfoMixin, Qwen2_5_VLProcessingInfo):
    """Qwen2.5-VL's processing info at the config's budgets."""


class Qwen2_5_VLPruMergeMultiModalProcessor(QwenBudgetProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    """Qwen2.5-VL's multimodal processor writing the budgets' placeholders."""


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2_5_VLPruMergeMultiModalProcessor,
    info=Qwen2_5_VLPruMergeProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class Qwen2_5_VLPruMergeForConditionalGeneration(QwenVllmMixin, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL whose language model sees only the PruMerge-reduced image and video tokens."""


class Qwen2VLPruMergeProcessingInfo(QwenBudgetInfoMixin, Qwen2VLProcessingInfo):
    """Qwen2-VL's processing info at the config's budgets."""


class Qwen2VLPruMergeMultiModalProcessor(QwenBudgetProcessorMixin, Qwen2VLMultiModalProcessor):
    """Qwen2-VL's multimodal processor writing the budgets' placeholders."""


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2VLPruMergeMultiModalProcessor,
    info=Qwen2VLPruMergeProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class Qwen2VLPruMergeForConditionalGeneration(QwenVllmMixin, Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL whose language model sees only the PruMerge-reduced image and video tokens."""
