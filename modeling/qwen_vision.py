# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""The vision tower's part of PruMerge for Qwen2-VL and Qwen2.5-VL: merged tokens, their importance and keys.

The tower embeds patches (14 px, two frames deep), runs its blocks over each attention sequence (an
image, or one frame group of a video; Qwen2.5-VL attends within windows except in a few full-attention
blocks, `fullatt_block_indexes`) and its `merger` maps each 2 x 2 group of neighboring patches to one
token of the LLM's width: the tokens the LLM sees, in raster order of the merged grid. The tower has no
[CLS] token, so patches are scored by the no-[CLS] stand-in (`ReductionSettings.importance`) on the
q/k of the last full-attention block, the deepest that sees a whole image, over each attention
sequence; a merged token's importance is the mean of its 4 patches' (the IQR selection and the
attention weighting are scale-free, so mean and sum select alike), its key the mean of their keys,
taken before the rotary embedding (a rotation by position, not content). The whole tower runs as
stock (its output is the LLM's tokens), with a hook reading that block's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

from .errors import VisualInputError
from .reduction_settings import ReductionSettings
from .runtime_compat import vision_window_index
from .token_reduction import patch_importance, raise_if_not_finite
from .vision_encoding import EncodedPatches


@dataclass
class MergedTokens:
    """What the tower hands the reducer for a batch of items (images, or videos): per attention sequence (an
    image, or one frame group), its merged tokens in raster order and, when reducing, their importance and
    keys; `groups` says how many sequences each item has."""

    features: list[torch.Tensor]  # per sequence [n, hidden]: the merger's output, the LLM's tokens
    groups: list[int]  # per item, its sequences (an image: 1, a video: its frame groups)
    importance: list[torch.Tensor] | None = None  # per sequence [n]
    keys: list[torch.Tensor] | None = None  # per sequence [n, Dk]

    def sequence(self, index: int) -> EncodedPatches:
        """One sequence as the reducer takes it: a batch of one."""
        if self.importance is None:
            return EncodedPatches(self.features[index][None])
        return EncodedPatches(
            self.features[index][None], None, self.importance[index][None], self.keys[index][None]
        )


def last_full_attention_block(tower: nn.Module) -> int:
    """The index of the deepest block that attends over whole images (Qwen2-VL: every block does)."""
    full = getattr(tower.config, "fullatt_block_indexes", None)
    return full[-1] if full else len(tower.blocks) - 1


def check_grid(pixel_values, grid_thw, tower: nn.Module, name: str) -> torch.Tensor:
    """`grid_thw` [items, 3] whose patches fill `pixel_values` [patches, C * T * P * P] and merge 2 x 2."""
    if grid_thw is None:
        raise VisualInputError(
            f"{name} needs its grid_thw (the processor returns both): each item's (frames, rows, columns) of patches"
        )
    grid = torch.as_tensor(grid_thw)
    merge = tower.spatial_merge_size
    if grid.dim() != 2 or grid.shape[-1] != 3 or bool((grid <= 0).any()):
        raise VisualInputError(
            f"{name} grid_thw must be [items, 3] positive (t, h, w), got {tuple(grid.shape)}"
        )
    if bool((grid[:, 1:] % merge != 0).any()):
        raise VisualInputError(
            f"{name} grid_thw rows and columns must be multiples of {merge} (2 x 2 patches merge into a token), "
            f"got {grid.tolist()}"
        )
    patches = int(grid.prod(-1).sum())
    if (
        not isinstance(pixel_values, torch.Tensor)
        or pixel_values.dim() != 2
        or pixel_values.shape[0] != patches
    ):
        shape = (
            tuple(pixel_values.shape)
            if isinstance(pixel_values, torch.Tensor)
            else type(pixel_values).__name__
        )
        raise VisualInputError(
            f"{name} holds {shape} but its grid_thw {grid.tolist()} makes {patches} patches: pass the "
            "grid_thw the processor returned with these pixel values"
        )
    raise_if_not_finite(pixel_values, f"{name} contain NaN or inf; check the image loading and preprocessing")
    return grid


def encode_merged_tokens(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    settings: ReductionSettings,
    kwargs=None,
) -> tuple[MergedTokens, object]:
    """The tower on `pixel_values` (as stock: its outputs are returned beside) and, when `settings` reduce, each
    merged token's importance and key (see the module docstring). Returns (tokens, the tower's output)."""
    captured = {}

    def capture(_, args, block_kwargs):  # the full-attention block's input, its sequences and rotary tables
        captured.update(hidden=args[0] if args else block_kwargs["hidden_states"], **block_kwargs)

    block = tower.blocks[last_full_attention_block(tower)]
    handle = block.register_forward_pre_hook(capture, with_kwargs=True) if settings.reduces else None
    try:
        output = tower(pixel_values.type(tower.dtype), grid_thw=grid_thw, **(kwargs or {}))
    finally:
        if handle is not None:
            handle.remove()
    merged = output if isinstance(output, torch.Tensor) else output.pooler_output  # 4.x: the tensor alone
    merge_unit = tower.spatial_merge_size**2
    per_sequence = [int(h * w) // merge_unit for t, h, w in grid_thw.tolist() for _ in range(int(t))]
    tokens = MergedTokens(list(merged.split(per_sequence)), [int(t) for t in grid_thw[:, 0].tolist()])
    if settings.reduces:
        importance, keys = merged_importance(tower, block, captured, grid_thw, settings, merge_unit)
        tokens.importance = list(importance.split(per_sequence))
        tokens.keys = list(keys.split(per_sequence))
    return tokens, output


def merged_importance(tower, block, captured: dict, grid_thw, settings: ReductionSettings, merge_unit: int):
    """([merged tokens] importance, [merged tokens, Dk] keys) in the merger's output order, from the captured
    input of the full-attention block (rows in the tower's window order)."""
    hidden = captured["hidden"]  # [patches, C], window order
    cos, sin = captured["position_embeddings"]
    attention = block.attn
    qkv = attention.qkv(block.norm1(hidden)).reshape(hidden.shape[0], 3, attention.num_heads, -1)
    queries, keys = qkv[:, 0], qkv[:, 1]  # [patches, heads, hd]
    rotated_queries, rotated_keys = apply_rotary_pos_emb_vision(queries, keys, cos, sin)
    order = vision_window_index(tower, grid_thw)  # merged position -> its window-order slot, or None
    cu_seqlens = captured["cu_seqlens"].tolist()
    return merged_token_scores(rotated_queries, rotated_keys, keys, cu_seqlens, order, settings, merge_unit)


def merged_token_scores(
    rotated_queries: torch.Tensor,
    rotated_keys: torch.Tensor,
    keys: torch.Tensor,
    cu_seqlens: list[int],
    window_order: torch.Tensor | None,
    settings: ReductionSettings,
    merge_unit: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([merged tokens] importance, [merged tokens, Dk] keys) in the merger's output order, from a full-attention
    block's q/k per patch [patches, heads, hd] in the tower's window order (`window_order`: merged position ->
    its window slot, None without windows; `cu_seqlens`: where each attention sequence starts and ends): the
    stand-in score per sequence, then each merged token the mean of its patches' scores and keys."""
    num_heads = rotated_queries.shape[1]
    scores = []
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True):  # one attention sequence at a time
        scores.append(
            patch_importance(
                rotated_queries[start:end].flatten(1)[None],
                rotated_keys[start:end].flatten(1)[None],
                settings.importance,
                settings.class_attention,
                num_heads,
                class_token=False,
            )[0]
        )
    importance = torch.cat(scores)  # [patches], window order
    units = importance.reshape(-1, merge_unit)  # [merged, 4]: a merged token's patches are consecutive
    unit_keys = keys.flatten(1).reshape(units.shape[0], merge_unit, -1)
    if window_order is not None:
        back = torch.argsort(window_order.to(units.device))
        units, unit_keys = units[back], unit_keys[back]
    return units.float().mean(-1), unit_keys.mean(1)
