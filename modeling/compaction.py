# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Sequence compaction: each visual item's placeholder run replaced by that item's reduced tokens.

The stock processors expand every `<image>` (or `<video>`) into as many placeholders as the stock
model has features for it; PruMerge keeps a different number of tokens per item, known only once
the vision tower has run. So before the language model runs, each prompt is rebuilt: text tokens
are kept, each placeholder run becomes its item's tokens, padding is dropped, and the batch is
re-padded. The language model gets a genuinely shorter sequence, not masked placeholders.

Architecture-agnostic: a model hands over one `VisualTokens` per modality (images, videos) and a
boolean placeholder mask per modality; everything else (labels, positions, padding) follows here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import VisualInputError

IGNORE_INDEX = -100  # label of tokens left out of the loss (visual tokens, padding)


@dataclass
class VisualTokens:
    """One modality's reduced tokens, ready to replace its placeholder runs, items in prompt order."""

    modality: str  # "image" or "video": names it in messages and output fields
    token_id: int  # its placeholder token
    features: list[torch.Tensor]  # per item [n_i, hidden], projected into the language model's space
    expanded_lengths: list[int]  # per item, how many placeholders the stock processor writes for it
    centers: list[torch.Tensor]  # per item, the patch index behind each token (summary token excepted)

    @property
    def counts(self) -> list[int]:
        """Per item, how many tokens reach the language model."""
        return [int(tokens.shape[0]) for tokens in self.features]


@dataclass
class CompactedBatch:
    """The batch the language model sees: every placeholder run holds its item's tokens, re-padded."""

    inputs_embeds: torch.Tensor  # [B, L', hidden]
    attention_mask: torch.LongTensor  # [B, L']
    position_ids: torch.LongTensor  # [B, L']
    input_ids: torch.LongTensor | None  # [B, L'] visual positions hold their placeholder id
    labels: torch.LongTensor | None  # [B, L'], IGNORE_INDEX on visual tokens and padding
    visual: list[VisualTokens]


def placeholder_runs(placeholders: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per sample, the (start, length) of each maximal run of True in a [B, L] mask."""
    previous = F.pad(placeholders[:, :-1], (1, 0))
    following = F.pad(placeholders[:, 1:], (0, 1))
    starts = (placeholders & ~previous).nonzero().tolist()
    ends = (placeholders & ~following).nonzero().tolist()
    runs = [[] for _ in range(placeholders.shape[0])]
    for (sample, start), (_, end) in zip(starts, ends, strict=True):
        runs[sample].append((start, end - start + 1))
    return runs


def assign_runs(
    runs: list[list[tuple[int, int]]],
    expanded_lengths: list[int],
    modality: str,
    counts: list[int] | None = None,
) -> list[list[tuple[int, int]]]:
    """Per sample, one (start, length) span per item, items in prompt order.

    A run is one item when there are as many runs as items: one placeholder, the processor's
    expansion, or the item's reduced `counts` (a prompt compacted already); otherwise a run must be
    exactly the processor's expansions of consecutive items (adjacent `<image><image>` expanded), their
    reduced `counts`, or one placeholder each (`<image><image>` as written), and is split at their boundaries.
    """
    lengths = [length for sample_runs in runs for _, length in sample_runs]
    if len(lengths) == len(expanded_lengths):
        _check_run_lengths(lengths, expanded_lengths, modality, counts)
        return runs
    for item_lengths in (expanded_lengths, counts, [1] * len(expanded_lengths)):  # the last: `<image><image>`
        spans = _split_runs(runs, item_lengths) if item_lengths is not None else None
        if spans is not None:
            return spans
    expansions = sorted(set(expanded_lengths))
    raise VisualInputError(
        f"The prompts hold {len(lengths)} run(s) of {modality} tokens (lengths {lengths}) but "
        f"{len(expanded_lengths)} {modality}(s) were given: each {modality} needs its own `<{modality}>` in the "
        f"text (one token, or the processor's {' or '.join(map(str, expansions))}), and each `<{modality}>` a {modality}."
    )


def _check_run_lengths(lengths: list[int], expanded_lengths: list[int], modality: str, counts) -> None:
    """Each item's run is one placeholder, its processor expansion, or its reduced count."""
    for index, (length, expanded) in enumerate(zip(lengths, expanded_lengths, strict=True)):
        allowed = {1, expanded} | ({counts[index]} if counts is not None else set())
        if length not in allowed:
            raise VisualInputError(
                f"The prompt's {modality} number {index + 1} has {length} `<{modality}>` tokens, but the {modality} "
                f"given expands to {expanded} (the processor's count for its size"
                + (" and number of frames" if modality == "video" else "")
                + f"): build the prompt with the processor from this {modality}, or write a single `<{modality}>`"
            )


def _split_runs(runs: list[list[tuple[int, int]]], expanded_lengths: list[int]) -> list | None:
    """Runs cut into consecutive items' expansions, or None when they do not add up exactly."""
    spans = [[] for _ in runs]
    pending = expanded_lengths[::-1]  # the next item's expansion is last
    for sample, sample_runs in enumerate(runs):
        for start, length in sample_runs:
            end = start + length
            while start < end and pending:
                spans[sample].append((start, pending[-1]))
                start += pending.pop()
            if start != end:
                return None
    return None if pending else spans


def compact_batch(
    text_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    visual: list[VisualTokens],
    placeholders: dict[str, torch.Tensor],
    *,
    input_ids: torch.LongTensor | None = None,
    labels: torch.LongTensor | None = None,
    padding_side: str | None = None,
    pad_token_id: int = 0,
) -> CompactedBatch:
    """Replace each item's placeholder run in `text_embeds` [B, L, hidden] by its tokens and re-pad.

    placeholders: per modality, the [B, L] mask of its placeholder positions (padding excluded).
    `padding_side` defaults to the right when the input was right-padded, else to the left (so that
    position -1 is every sample's last token).
    """
    keep = attention_mask.bool()
    spans = [[] for _ in range(text_embeds.shape[0])]  # per sample: (start, length, tokens, token_id)
    for tokens in visual:
        runs = placeholder_runs(placeholders[tokens.modality] & keep)
        assigned = assign_runs(runs, tokens.expanded_lengths, tokens.modality, tokens.counts)
        items = iter(tokens.features)
        for sample, sample_spans in enumerate(assigned):
            spans[sample] += [(start, length, next(items), tokens.token_id) for start, length in sample_spans]
    if padding_side is None:  # right only where the input was right-padded: position -1 is the last token
        padding_side = "right" if bool((attention_mask[:, -1] == 0).any()) else "left"

    rows = [_compact_row(sample, sorted(sample_spans, key=lambda span: span[0]), text_embeds, keep, input_ids, labels)
            for sample, sample_spans in enumerate(spans)]  # fmt: skip
    length = max(embeds.shape[0] for embeds, _, _ in rows)

    def pad(tensor: torch.Tensor, value) -> torch.Tensor:
        filler = tensor.new_full((length - tensor.shape[0], *tensor.shape[1:]), value)
        return torch.cat([filler, tensor] if padding_side == "left" else [tensor, filler])

    new_mask = torch.stack(
        [pad(embeds.new_ones(embeds.shape[0], dtype=torch.long), 0) for embeds, _, _ in rows]
    )
    return CompactedBatch(
        inputs_embeds=torch.stack([pad(embeds, 0.0) for embeds, _, _ in rows]),
        attention_mask=new_mask,
        position_ids=(new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 1),
        input_ids=None if input_ids is None else torch.stack([pad(ids, pad_token_id) for _, ids, _ in rows]),
        labels=None if labels is None else torch.stack([pad(lab, IGNORE_INDEX) for _, _, lab in rows]),
        visual=visual,
    )


def _compact_row(sample: int, spans: list, text_embeds, keep, input_ids, labels):
    """One sample's (embeds, ids, labels) with padding dropped and each span replaced by its tokens."""
    embeds, ids, row_labels = [], [], []
    cursor = 0
    for start, length, tokens, token_id in [*spans, (text_embeds.shape[1], 0, None, None)]:
        text = keep[sample, cursor:start]
        embeds.append(text_embeds[sample, cursor:start][text])
        if input_ids is not None:
            ids.append(input_ids[sample, cursor:start][text])
        if labels is not None:
            row_labels.append(labels[sample, cursor:start][text])
        if tokens is not None:
            embeds.append(tokens.to(text_embeds.device, text_embeds.dtype))
            if input_ids is not None:
                ids.append(input_ids.new_full((tokens.shape[0],), token_id))
            if labels is not None:
                row_labels.append(labels.new_full((tokens.shape[0],), IGNORE_INDEX))
        cursor = start + length
    return (
        torch.cat(embeds),
        torch.cat(ids) if input_ids is not None else None,
        torch.cat(row_labels) if labels is not None else None,
    )
