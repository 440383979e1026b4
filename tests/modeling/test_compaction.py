"""Sequence compaction on its own: placeholder runs, their items, and the re-padded batch, for any modality."""

import pytest
import torch

from llava_prumerge.errors import VisualInputError
from llava_prumerge.modeling.compaction import (
    IGNORE_INDEX,
    VisualTokens,
    assign_runs,
    centers_by_sample,
    compact_batch,
    fits_in_place,
    item_spans,
    items_per_sample,
    placeholder_runs,
    repeat_per_prompt,
    write_in_place,
)

IMAGE, VIDEO, PAD = 9, 8, 0


def tokens(modality, token_id, counts, expanded, base):
    """Items whose tokens are recognizable: item i's rows are all base + i."""
    return VisualTokens(
        modality=modality,
        token_id=token_id,
        features=[torch.full((count, 2), float(base + item)) for item, count in enumerate(counts)],
        expanded_lengths=[expanded] * len(counts),
        centers=[torch.arange(count) for count in counts],
    )


def test_placeholder_runs_are_maximal_runs_per_sample():
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]).bool()
    assert placeholder_runs(mask) == [[(1, 2), (4, 1)], [(0, 1)], []]


def test_a_run_is_one_item_or_is_split_into_adjacent_expansions():
    runs = [[(1, 4)], [(0, 4), (6, 1)]]
    assert assign_runs(runs, [4, 4, 4], "image") == runs  # one run per item: expanded, or one placeholder
    assert assign_runs([[(3, 2)]], [4, 4], "image") == [[(3, 1), (4, 1)]]  # <image><image> as written
    with pytest.raises(VisualInputError, match="has 2 `<image>` tokens, but the image given expands to 4"):
        assign_runs([[(3, 2)]], [4], "image")  # two placeholders for one image: not silently one
    assert assign_runs([[(2, 8)]], [4, 4], "image") == [[(2, 4), (6, 4)]]  # <image><image> expanded
    assert assign_runs([[(0, 7)]], [3, 4], "image") == [[(0, 3), (3, 4)]]  # items of different expansions
    assert assign_runs([[(0, 5)]], [4, 4], "image", counts=[2, 3]) == [[(0, 2), (2, 3)]]  # compacted already
    with pytest.raises(
        VisualInputError, match=r"1 run\(s\) of image tokens \(lengths \[6\]\) but 2 image\(s\)"
    ):
        assign_runs([[(0, 6)]], [4, 4], "image")
    with pytest.raises(VisualInputError, match=r"1 run\(s\) of video tokens .* but 2 video\(s\)"):
        assign_runs([[(0, 5)]], [4, 4], "video")


def compacted(input_ids, mask, visual, **kwargs):
    """`compact_batch` on embeddings whose text rows are 100 x the token id."""
    masks = {tokens.modality: input_ids == tokens.token_id for tokens in visual}
    embeds = input_ids[..., None].float().expand(-1, -1, 2) * 100
    return compact_batch(embeds, mask, visual, item_spans(visual, masks), input_ids=input_ids, **kwargs)


def test_compaction_replaces_runs_keeps_text_and_repads_on_the_input_side():
    input_ids = torch.tensor([[PAD, 1, IMAGE, IMAGE, IMAGE, 2], [3, IMAGE, IMAGE, IMAGE, 4, 5]])
    mask = (input_ids != PAD).long()
    labels = torch.where(input_ids == IMAGE, IGNORE_INDEX, input_ids)
    images = tokens("image", IMAGE, [1, 2], 3, base=0.5)
    batch = compacted(input_ids, mask, [images], labels=labels, pad_token_id=PAD)
    # the padding is text the mask hides: it stays, and the shorter row is padded again on its side
    assert batch.input_ids.tolist() == [[PAD, PAD, 1, IMAGE, 2], [3, IMAGE, IMAGE, 4, 5]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[1, 0, 1, 2, 3], [0, 1, 2, 3, 4]]  # 0, 1, ... moved past each item
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX, 2],  # the row's first label stays unpredicted
        [3, IGNORE_INDEX, IGNORE_INDEX, 4, 5],
    ]
    assert batch.inputs_embeds[0, :, 0].tolist() == [0, 0, 100, 0.5, 200]
    assert batch.inputs_embeds[1, :, 0].tolist() == [300, 1.5, 1.5, 400, 500]
    right = compacted(input_ids, mask, [images], padding_side="right")
    assert right.attention_mask.tolist() == [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_the_mask_hides_text_and_items_but_never_removes_them():
    """As stock: the attention mask decides what attention sees, not which positions exist."""
    input_ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, 2, 3]])
    images = tokens("image", IMAGE, [2], 3, base=0.5)
    partly_hidden = compacted(input_ids, torch.tensor([[1, 0, 1, 1, 0, 1]]), [images])
    assert partly_hidden.input_ids.tolist() == [[1, IMAGE, IMAGE, 2, 3]]  # one item, whatever its mask
    assert partly_hidden.attention_mask.tolist() == [[1, 1, 1, 0, 1]]  # visible where any placeholder was
    hidden = compacted(input_ids, torch.tensor([[1, 0, 0, 0, 1, 1]]), [images])
    assert hidden.attention_mask.tolist() == [[1, 0, 0, 1, 1]] and hidden.inputs_embeds[0, 1, 0] == 0.5
    positions = torch.tensor([[0, 1, 2, 3, 4, 5]]) + 7
    given = compacted(input_ids, torch.ones_like(input_ids), [images], position_ids=positions)
    assert given.position_ids.tolist() == [[7, 8, 9, 10, 11]]
    unreduced = tokens("image", IMAGE, [3], 3, base=0.5)  # as many tokens as placeholders: written in place
    labels = input_ids.clone()
    mask = torch.tensor([[1, 0, 1, 0, 1, 0]])
    in_place = compacted(input_ids, mask, [unreduced], labels=labels, position_ids=positions)
    assert (
        in_place.input_ids.tolist() == input_ids.tolist()
        and in_place.attention_mask.tolist() == mask.tolist()
    )
    assert (
        in_place.labels.tolist() == labels.tolist() and in_place.position_ids.tolist() == positions.tolist()
    )


def test_items_fit_in_place_when_their_runs_have_their_token_counts():
    input_ids = torch.tensor([[1, IMAGE, IMAGE, 2, IMAGE, IMAGE, IMAGE]])
    masks = {"image": input_ids == IMAGE}
    images = tokens("image", IMAGE, [2, 3], 9, base=0.5)
    spans = item_spans([images], masks)
    assert [(span.start, span.length, span.item) for span in spans[0]] == [(1, 2, 0), (4, 3, 1)]
    assert fits_in_place([images], spans)
    embeds = torch.zeros(1, 7, 2)
    assert write_in_place(embeds, [images], spans)[0, :, 0].tolist() == [0, 0.5, 0.5, 0, 1.5, 1.5, 1.5]
    single = tokens("image", IMAGE, [2], 9, base=0)
    written_once = torch.tensor([[1, IMAGE, 2]])  # one `<image>` for an item of two tokens: compacted
    assert not fits_in_place([single], item_spans([single], {"image": written_once == IMAGE}))


def test_items_of_copied_prompts_are_repeated_for_each_copy():
    """Beams and num_return_sequences copy each prompt in place ([a, a, b, b]); its items are copied with it."""
    images = tokens("image", IMAGE, [2, 1, 3], 9, base=0.5)  # the first prompt holds two images
    repeated = repeat_per_prompt(images, items_per_prompt=[2, 1], copies=2)
    assert [float(item[0, 0]) for item in repeated.features] == [0.5, 1.5, 0.5, 1.5, 2.5, 2.5]
    input_ids = torch.tensor([[IMAGE, 1, IMAGE], [2, IMAGE, 3]])
    assert items_per_sample(item_spans([images], {"image": input_ids == IMAGE}), "image") == [2, 1]


def test_kept_patches_are_reported_per_sample_and_item():
    input_ids = torch.tensor([[IMAGE, 1, IMAGE], [2, IMAGE, 3]])
    images = tokens("image", IMAGE, [2, 1, 3], 1, base=0)
    centers = centers_by_sample([images], item_spans([images], {"image": input_ids == IMAGE}))["image"]
    assert centers.tolist() == [[[0, 1, -1], [0, -1, -1]], [[0, 1, 2], [-1, -1, -1]]]


def test_modalities_interleave_in_prompt_order():
    input_ids = torch.tensor([[VIDEO, VIDEO, 1, IMAGE, VIDEO, VIDEO, 2]])
    images = tokens("image", IMAGE, [2], 1, base=10)
    videos = tokens("video", VIDEO, [1, 3], 2, base=20)
    batch = compacted(input_ids, torch.ones_like(input_ids), [images, videos])
    assert batch.input_ids.tolist() == [[VIDEO, 1, IMAGE, IMAGE, VIDEO, VIDEO, VIDEO, 2]]
    assert batch.inputs_embeds[0, :, 0].tolist() == [20, 100, 10, 10, 21, 21, 21, 200]
    assert batch.visual == [images, videos] and videos.counts == [1, 3]


def test_multi_row_positions_keep_every_token_at_its_place():
    """mRoPE-style positions [rows, B, L]: text keeps its own, each reduced token takes the position of its
    place in the run; rows without reduction keep theirs; re-padding fills positions with 1."""
    ids = torch.tensor([[5, IMAGE, IMAGE, IMAGE, IMAGE, 6, 7], [PAD, PAD, 5, IMAGE, IMAGE, IMAGE, IMAGE]])
    mask = (ids != PAD).long()
    positions = torch.stack([torch.arange(7).expand(2, 7) * (row + 1) for row in range(3)])  # [3, 2, 7]
    visual = tokens("image", IMAGE, [2, 4], 4, 10)
    visual.places = [torch.tensor([3, 1]), torch.arange(4)]
    spans = item_spans([visual], {"image": ids == IMAGE})
    embeds = torch.zeros(2, 7, 2)
    batch = compact_batch(
        embeds, mask, [visual], spans, input_ids=ids, position_ids=positions, padding_side="left"
    )
    assert batch.position_ids.shape == (3, 2, 7 - 0)  # the longer row keeps its length
    first = batch.position_ids[:, 0]  # [3, 7]: two left-padding slots, then 5, place 3, place 1, 6, 7
    assert batch.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert first[:, 2:].tolist() == [[r * p for p in (0, 4, 2, 5, 6)] for r in (1, 2, 3)]
    assert torch.equal(batch.position_ids[:, 1], positions[:, 1])  # in place: as given
    visual.places = None
    with pytest.raises(VisualInputError, match="need each image token's place"):
        compact_batch(embeds, mask, [visual], spans, input_ids=ids, position_ids=positions)
