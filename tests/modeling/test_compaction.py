"""Sequence compaction on its own: placeholder runs, their items, and the re-padded batch, for any modality."""

import pytest
import torch

from llava_prumerge.errors import VisualInputError
from llava_prumerge.modeling.compaction import (
    IGNORE_INDEX,
    VisualTokens,
    assign_runs,
    compact_batch,
    placeholder_runs,
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


def test_compaction_replaces_runs_keeps_text_and_repads_on_the_input_side():
    input_ids = torch.tensor([[PAD, 1, IMAGE, IMAGE, IMAGE, 2], [3, IMAGE, IMAGE, IMAGE, 4, 5]])
    mask = (input_ids != PAD).long()
    labels = torch.where(input_ids == IMAGE, IGNORE_INDEX, input_ids)
    embeds = input_ids[..., None].float().expand(-1, -1, 2) * 100  # text rows: 100 x id
    images = tokens("image", IMAGE, [1, 2], 3, base=0.5)
    batch = compact_batch(
        embeds,
        mask,
        [images],
        {"image": input_ids == IMAGE},
        input_ids=input_ids,
        labels=labels,
        pad_token_id=PAD,
    )
    assert batch.input_ids.tolist() == [[PAD, PAD, 1, IMAGE, 2], [3, IMAGE, IMAGE, 4, 5]]  # left, as given
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX, 2],
        [3, IGNORE_INDEX, IGNORE_INDEX, 4, 5],
    ]
    assert batch.inputs_embeds[0, :, 0].tolist() == [0, 0, 100, 0.5, 200]
    assert batch.inputs_embeds[1, :, 0].tolist() == [300, 1.5, 1.5, 400, 500]
    right = compact_batch(embeds, mask, [images], {"image": input_ids == IMAGE}, padding_side="right")
    assert right.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]] and right.input_ids is None


def test_modalities_interleave_in_prompt_order():
    input_ids = torch.tensor([[VIDEO, VIDEO, 1, IMAGE, VIDEO, VIDEO, 2]])
    embeds = torch.zeros(1, 7, 2)
    images = tokens("image", IMAGE, [2], 1, base=10)
    videos = tokens("video", VIDEO, [1, 3], 2, base=20)
    masks = {"image": input_ids == IMAGE, "video": input_ids == VIDEO}
    batch = compact_batch(embeds, torch.ones_like(input_ids), [images, videos], masks, input_ids=input_ids)
    assert batch.input_ids.tolist() == [[VIDEO, 1, IMAGE, IMAGE, VIDEO, VIDEO, VIDEO, 2]]
    assert batch.inputs_embeds[0, :, 0].tolist() == [20, 0, 10, 10, 21, 21, 21, 0]
    assert batch.visual == [images, videos] and videos.counts == [1, 3]
