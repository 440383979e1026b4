# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Sequence compaction: each visual item's placeholder run replaced by that item's reduced tokens.

The stock processors expand every `<image>` (or `<video>`) into as many placeholders as the stock
model has features for it; PruMerge keeps a different number of tokens per item, known only once
the vision tower has run. So before the language model runs, each prompt is rebuilt: every text
position is kept (with its attention-mask value, label and position), each placeholder run becomes
its item's tokens, and the batch is re-padded. The language model gets a genuinely shorter
sequence, not masked placeholders.

As in stock LLaVA, the attention mask decides only what attention sees: a placeholder run is one
item whatever its mask. Where a run already holds as many placeholders as its item has tokens
(no reduction, or a prompt compacted before), the tokens are written in place, as stock writes
features, and nothing else changes.

Architecture-agnostic: a model hands over one `VisualTokens` per modality (images, videos) and a
boolean placeholder mask per modality; everything else (labels, positions, padding) follows here.
Deciding (`item_spans`: which run is which item) is separate from applying (`write_in_place`,
`compact_batch`), so a caller decides once and picks the cheaper application. The model decides on
host copies of the placeholder masks (fetched with the forward's one host read, see
`token_reduction.HostReads`), so deciding makes the host wait for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import VisualInputError

IGNORE_INDEX = -100  # label of tokens left out of the loss (visual tokens, padding)
CENTER_PADDING = -1  # fills the per-item kept-patch tensors past an item's own tokens


@dataclass
class VisualTokens:
    """One modality's reduced tokens, ready to replace its placeholder runs, items in prompt order."""

    modality: str  # "image" or "video": names it in messages and output fields
    token_id: int  # its placeholder token
    features: list[torch.Tensor]  # per item [n_i, hidden], projected into the language model's space
    expanded_lengths: list[int]  # per item, how many placeholders the stock processor writes for it
    centers: list[torch.Tensor | None]  # per item, the patch index behind each token (summary token excepted)
    # per item, for each token, the placeholder of its run whose position it takes; needed only where the
    # language model places tokens by multi-row positions (mRoPE: [rows, B, L] position_ids)
    places: list[torch.Tensor] | None = None

    @property
    def counts(self) -> list[int]:
        """Per item, how many tokens reach the language model."""
        return [int(tokens.shape[0]) for tokens in self.features]


@dataclass(frozen=True)
class Span:
    """Where one item's placeholders stand in its sample, and the item."""

    start: int
    length: int
    modality: str
    item: int  # index into its modality's items

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class CompactedBatch:
    """The batch the language model sees: every placeholder run holds its item's tokens, re-padded."""

    inputs_embeds: torch.Tensor  # [B, L', hidden]
    attention_mask: torch.LongTensor  # [B, L']
    position_ids: torch.LongTensor  # [B, L']
    input_ids: torch.LongTensor | None  # [B, L'] visual positions hold their placeholder id
    labels: torch.LongTensor | None  # [B, L'], IGNORE_INDEX on reduced visual tokens and re-padding
    visual: list[VisualTokens]
    spans: list[list[Span]]  # per sample, its items in prompt order (positions of the input)


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


def has_placeholders(placeholders: torch.Tensor) -> bool:
    """Whether a [B, L] placeholder mask marks any position."""
    return bool(placeholders.any())


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


def repeat_per_prompt(tokens: VisualTokens, items_per_prompt: list[int], copies: int) -> VisualTokens:
    """Items made for P prompts (`items_per_prompt[p]` each, in order) when the batch holds each prompt `copies`
    times in a row ([a, a, b, b]: beams or `num_return_sequences`): each prompt's items repeated with it."""
    starts = [sum(items_per_prompt[:prompt]) for prompt in range(len(items_per_prompt))]
    order = [
        start + item
        for start, count in zip(starts, items_per_prompt, strict=True)
        for _ in range(copies)
        for item in range(count)
    ]
    return VisualTokens(
        tokens.modality,
        tokens.token_id,
        [tokens.features[i] for i in order],
        [tokens.expanded_lengths[i] for i in order],
        [tokens.centers[i] for i in order],
    )


def items_per_sample(spans: list[list[Span]], modality: str) -> list[int]:
    """Per sample, how many items of `modality` it holds."""
    return [sum(span.modality == modality for span in sample) for sample in spans]


def item_spans(visual: list[VisualTokens], placeholders: dict[str, torch.Tensor]) -> list[list[Span]]:
    """Per sample, the span of each item, in prompt order: the decision that `write_in_place` and
    `compact_batch` apply. placeholders: per modality, the [B, L] mask of its placeholder positions,
    whatever the attention mask says (as stock, the mask only decides what attention sees)."""
    batch = next(iter(placeholders.values())).shape[0]
    spans = [[] for _ in range(batch)]
    for tokens in visual:
        runs = placeholder_runs(placeholders[tokens.modality])
        assigned = assign_runs(runs, tokens.expanded_lengths, tokens.modality, tokens.counts)
        item = 0
        for sample, sample_runs in enumerate(assigned):
            for start, length in sample_runs:
                spans[sample].append(Span(start, length, tokens.modality, item))
                item += 1
    return [sorted(sample_spans, key=lambda span: span.start) for sample_spans in spans]


def fits_in_place(visual: list[VisualTokens], spans: list[list[Span]]) -> bool:
    """Whether every item's tokens stand one on each of its placeholders, in order (no reduction, or compacted
    already): as many tokens as placeholders, each (where tokens name their places) at its own."""
    by_modality = {tokens.modality: tokens for tokens in visual}
    return all(_in_place(by_modality[span.modality], span) for sample in spans for span in sample)


def _in_place(tokens: VisualTokens, span: Span) -> bool:
    """Whether the item of `span` has one token per placeholder, the k-th on the k-th."""
    if tokens.features[span.item].shape[0] != span.length:
        return False
    places = None if tokens.places is None else tokens.places[span.item]
    return places is None or torch.equal(places.cpu(), torch.arange(span.length))


def write_in_place(
    text_embeds: torch.Tensor, visual: list[VisualTokens], spans: list[list[Span]]
) -> torch.Tensor:
    """`text_embeds` [B, L, hidden] with each item's tokens written over its placeholders, as stock LLaVA writes
    image features (`fits_in_place` must hold)."""
    features = {tokens.modality: tokens.features for tokens in visual}
    ordered = [features[span.modality][span.item] for sample in spans for span in sample]
    if not ordered:
        return text_embeds
    where = torch.zeros(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
    for sample, sample_spans in enumerate(spans):
        for span in sample_spans:
            where[sample, span.start : span.end] = True
    values = torch.cat(ordered).to(text_embeds.device, text_embeds.dtype)  # [sum n_i, hidden]
    return text_embeds.masked_scatter(where[..., None], values)  # row-major, as the spans are ordered


def write_static_layout(
    text_embeds: torch.Tensor, placeholders: dict[str, torch.Tensor], visual: list[VisualTokens]
) -> torch.Tensor:
    """`text_embeds` [B, L, hidden] with each modality's tokens written over its placeholders, in order, without
    reading the layout back: for prompts whose runs already hold exactly their items' tokens (a fixed budget's
    processor, or a prompt compacted before), as a compiled forward needs. A prompt with another number of
    placeholders fails an assertion on the device (a RuntimeError on a CPU)."""
    batch, length, hidden = text_embeds.shape
    for tokens in visual:
        where = placeholders[tokens.modality].reshape(-1)  # [B*L]
        values = torch.cat(tokens.features).to(text_embeds.device, text_embeds.dtype)  # [T, hidden]
        torch._assert_async(
            where.sum() == values.shape[0],
            f"a compiled forward needs exactly one `<{tokens.modality}>` placeholder per reduced token "
            f"({values.shape[0]} in this batch): build prompts with the fixed-budget processor, or run eagerly",
        )
        # [B*L]: the token each placeholder takes (the other positions keep their text, below)
        source = (where.cumsum(0) - 1).clamp(0, max(values.shape[0] - 1, 0))
        placed = values[source].view(batch, length, hidden)
        text_embeds = torch.where(where.view(batch, length, 1), placed, text_embeds)
    return text_embeds


def widened_prompt(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    labels: torch.LongTensor | None,
    visual: list[VisualTokens],
    spans: list[list[Span]],
    pad_token_id: int,
) -> tuple[torch.LongTensor, torch.Tensor | None, torch.LongTensor | None]:
    """(input_ids, attention_mask, labels) with every item's run widened to the stock processor's expansion (from
    one placeholder, or a fixed budget's count), for models whose positions follow stock rules over the stock
    layout (Qwen-VL's 3-D positions); compaction narrows the runs again. A widened run is visible when any of its
    placeholders was and gets IGNORE_INDEX labels; rows are re-padded on the side the input is padded."""
    expanded = {tokens.modality: tokens.expanded_lengths for tokens in visual}
    if all(span.length == expanded[span.modality][span.item] for sample in spans for span in sample):
        return input_ids, attention_mask, labels
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    sources = {"ids": input_ids, "mask": attention_mask, "labels": labels}
    rows = []
    for sample, sample_spans in enumerate(spans):
        pieces = {name: [] for name, source in sources.items() if source is not None}
        cursor = 0
        for span in [*sample_spans, None]:
            end = input_ids.shape[1] if span is None else span.start
            for name in pieces:  # the text before the span, as it is
                pieces[name].append(sources[name][sample, cursor:end])
            if span is None:
                break
            width = expanded[span.modality][span.item]
            pieces["ids"].append(input_ids.new_full((width,), int(input_ids[sample, span.start])))
            pieces["mask"].append(attention_mask[sample, span.start : span.end].max().expand(width))
            if labels is not None:
                pieces["labels"].append(labels.new_full((width,), IGNORE_INDEX))
            cursor = span.end
        rows.append({name: torch.cat(parts) for name, parts in pieces.items()})
    side = input_padding_side(attention_mask)
    length = max(row["ids"].shape[0] for row in rows)

    def stacked(name: str, value: int) -> torch.Tensor:
        return padded_stack([row[name] for row in rows], length, value, side)

    widened_labels = None if labels is None else stacked("labels", IGNORE_INDEX)
    return stacked("ids", pad_token_id), stacked("mask", 0), widened_labels


def input_padding_side(attention_mask: torch.Tensor) -> str:
    """The side rebuilt rows are padded on: the right only where the input was right-padded, else the left (so
    that position -1 is every sample's last token)."""
    return "right" if bool((attention_mask[:, -1] == 0).any()) else "left"


def padded_stack(rows: list[torch.Tensor], length: int, value, side: str) -> torch.Tensor:
    """[B, length, ...] from rows [L_i, ...] (the sequence first), each filled with `value` on `side`."""
    padded = []
    for row in rows:
        filler = row.new_full((length - row.shape[0], *row.shape[1:]), value)
        padded.append(torch.cat([filler, row] if side == "left" else [row, filler]))
    return torch.stack(padded)


def placed_batch(
    text_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    visual: list[VisualTokens],
    spans: list[list[Span]],
    *,
    input_ids: torch.LongTensor | None = None,
    labels: torch.LongTensor | None = None,
    position_ids: torch.LongTensor | None = None,
) -> CompactedBatch:
    """The batch when every item fits its span (`fits_in_place`): the tokens written in place, the rest as given
    (positions, when not given, those the language model uses by default)."""
    batch, length = text_embeds.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(length, device=text_embeds.device).expand(batch, length)
    embeds = write_in_place(text_embeds, visual, spans)
    return CompactedBatch(embeds, attention_mask, position_ids, input_ids, labels, visual, spans)


def compact_batch(
    text_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    visual: list[VisualTokens],
    spans: list[list[Span]],
    *,
    input_ids: torch.LongTensor | None = None,
    labels: torch.LongTensor | None = None,
    position_ids: torch.LongTensor | None = None,
    padding_side: str | None = None,
    pad_token_id: int = 0,
) -> CompactedBatch:
    """Replace each item's span in `text_embeds` [B, L, hidden] by its tokens and re-pad.

    Text keeps its mask value, label and position. An item whose tokens fill its span exactly keeps the
    span's mask values, labels and positions, as stock; otherwise its tokens are visible when any of its
    placeholders was, get IGNORE_INDEX labels and consecutive positions from the span's first, and what
    follows moves by the difference. Without `position_ids`, positions are those the language model uses
    by default (0, 1, ... over the input). Multi-row positions ([rows, B, L]: mRoPE's time, height and
    width) are the places themselves: text keeps its own, each token takes that of its place in the run
    (`VisualTokens.places`), so the language model sees every token where stock puts it. `padding_side`
    defaults to the right when the input was right-padded, else to the left (so that position -1 is every
    sample's last token).
    """
    batch, length = text_embeds.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(length, device=text_embeds.device).expand(batch, length)
    if padding_side is None:
        padding_side = input_padding_side(attention_mask)
    features = {tokens.modality: tokens for tokens in visual}
    rows = [
        _compact_row(
            sample, spans[sample], features, text_embeds, attention_mask, position_ids, input_ids, labels
        )
        for sample in range(batch)
    ]
    compacted_length = max(row["embeds"].shape[0] for row in rows)

    def stacked(name: str, value, rows_first: bool = False) -> torch.Tensor:
        sequences = [
            row[name].movedim(-1, 0) if rows_first else row[name] for row in rows
        ]  # the sequence first
        batch_first = padded_stack(sequences, compacted_length, value, padding_side)  # [B, L', ...]
        return batch_first.movedim(-1, 0) if rows_first else batch_first  # positions: [rows, B, L']

    if labels is not None and padding_side == "left":
        for row in rows:  # nothing came before a row's first token: it stays unpredicted behind the filler
            if row["labels"].shape[0] < compacted_length:
                row["labels"] = torch.cat([row["labels"].new_full((1,), IGNORE_INDEX), row["labels"][1:]])
    return CompactedBatch(
        inputs_embeds=stacked("embeds", 0.0),
        attention_mask=stacked("mask", 0),
        position_ids=stacked("positions", 1, rows_first=position_ids.dim() == 3),
        input_ids=None if input_ids is None else stacked("ids", pad_token_id),
        labels=None if labels is None else stacked("labels", IGNORE_INDEX),
        visual=visual,
        spans=spans,
    )


def _compact_row(
    sample: int, spans: list[Span], features: dict, text_embeds, mask, positions, input_ids, labels
):
    """One sample's embeds, mask, positions, ids and labels with each span replaced by its item's tokens."""
    pieces = {"embeds": [], "mask": [], "positions": [], "ids": [], "labels": []}
    sources = {
        "embeds": text_embeds,
        "mask": mask,
        "positions": positions,
        "ids": input_ids,
        "labels": labels,
    }
    placed = positions.dim() == 3  # [rows, B, L]: every token takes the position of its place
    sources["positions"] = positions[:, sample] if placed else positions[sample]  # [(rows,) L]
    cursor, shift = 0, 0
    for span in [*spans, None]:
        end = text_embeds.shape[1] if span is None else span.start
        for name, source in sources.items():  # the text before the span, as it is
            if source is None:
                continue
            if name == "positions":
                pieces[name].append(source[..., cursor:end] + (0 if placed else shift))
            else:
                pieces[name].append(source[sample, cursor:end])
        if span is None:
            break
        item = features[span.modality]
        tokens = item.features[span.item].to(text_embeds.device, text_embeds.dtype)  # [n, hidden]
        count = tokens.shape[0]
        pieces["embeds"].append(tokens)
        run_positions = sources["positions"][..., span.start : span.end]
        if _in_place(item, span):  # written in place: the span's own mask values, labels and positions
            kept = {name: source[sample, span.start : span.end] for name, source in sources.items()
                    if source is not None and name not in ("embeds", "positions")}  # fmt: skip
            kept["positions"] = run_positions + (0 if placed else shift)
        else:
            visible = mask[sample, span.start : span.end].max()
            kept = {
                "mask": visible.expand(count),
                "positions": _run_positions(run_positions, item.places, span, count, placed, shift),
                "ids": None if input_ids is None else input_ids.new_full((count,), item.token_id),
                "labels": None if labels is None else labels.new_full((count,), IGNORE_INDEX),
            }
        for name, piece in kept.items():
            if piece is not None:
                pieces[name].append(piece)
        shift += count - span.length
        cursor = span.end
    return {name: torch.cat(parts, dim=-1 if name == "positions" else 0) if parts else None
            for name, parts in pieces.items()}  # fmt: skip


def _run_positions(run_positions, places, span: Span, count: int, placed: bool, shift: int) -> torch.Tensor:
    """The positions of an item's `count` tokens replacing its placeholder run (`run_positions`: [(rows,)
    length]): those of their places (multi-row positions), else consecutive from the run's first."""
    if not placed:
        return run_positions[0] + shift + torch.arange(count, device=run_positions.device)
    if places is None or places[span.item] is None:
        raise VisualInputError(
            f"Multi-row position_ids need each {span.modality} token's place in its placeholder run; this "
            "model's visual tokens do not name them"
        )
    return run_positions[:, places[span.item].to(run_positions.device)]


def centers_by_sample(visual: list[VisualTokens], spans: list[list[Span]]) -> dict[str, torch.Tensor | None]:
    """Per modality, its items' kept patches as one batch-first tensor [B, items, tokens(, 2)], -1 past each
    sample's items and each item's patches (None where some item's patches are unknown)."""
    result = {}
    for tokens in visual:
        if not tokens.centers or any(centers is None for centers in tokens.centers):
            result[tokens.modality] = None
            continue
        per_sample = [
            [tokens.centers[span.item] for span in sample if span.modality == tokens.modality]
            for sample in spans
        ]
        items = max((len(sample) for sample in per_sample), default=0)
        width = max((len(centers) for centers in tokens.centers), default=0)
        example = tokens.centers[0]
        table = example.new_full((len(spans), items, width, *example.shape[1:]), CENTER_PADDING)
        for sample, sample_centers in enumerate(per_sample):
            for index, centers in enumerate(sample_centers):
                table[sample, index, : len(centers)] = centers
        result[tokens.modality] = table
    return result
