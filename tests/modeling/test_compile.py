"""A fixed budget has static shapes: the vision tower, the reducer and the projector compile as one graph
(fullgraph=True, so no host read of a count or a flag), and calls of one shape reuse it (no recompile). With
prompts in the budget's layout the whole prefill does, pixels to logits."""

import pytest
import torch
import torch._dynamo

from llava_prumerge import ReductionSettings, reduce_visual_tokens
from llava_prumerge.testing.tiny import tiny_model
from llava_prumerge.testing.tiny_video import tiny_video_model

FIXED = [
    {"token_reduction": "prumerge", "adaptive": False, "num_visual_tokens": 16},
    {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 24},
    {
        "token_reduction": "prumerge_plus",
        "adaptive": False,
        "reduction_ratio": 0.25,
        "token_order": "spatial",
    },
    {"token_reduction": "prumerge", "adaptive": False, "num_visual_tokens": 196},  # every patch kept
    {"token_reduction": "spatial", "num_visual_tokens": 16},
]


def compiled_once(function):
    """`function` compiled whole (fullgraph: a graph break is an error) by a backend that counts graphs."""
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    return torch.compile(function, fullgraph=True, backend=backend), graphs


@pytest.mark.parametrize("fields", FIXED, ids=lambda fields: "-".join(map(str, fields.values())))
def test_the_image_path_of_a_fixed_budget_compiles_whole_and_once(fields):
    model = tiny_model(seed=1, **fields).eval()
    inner, settings = model.model, model.config.reduction_settings

    def image_tokens(pixel_values):  # tower -> reducer -> projector
        return inner.tokens_of_images(pixel_values, reduction=settings).features

    compiled, graphs = compiled_once(image_tokens)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (0, 1, 2):  # other pixels, other attention: the same graph
            pixel_values = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(seed))
            for ours, eager in zip(compiled(pixel_values), image_tokens(pixel_values), strict=True):
                torch.testing.assert_close(ours, eager)
    assert len(graphs) == 1


def test_the_video_path_of_a_fixed_budget_compiles_whole_and_once():
    model = tiny_video_model(
        seed=1, token_reduction="prumerge_plus", adaptive=False, num_video_tokens=64
    ).eval()
    inner = model.model

    def video_tokens(pixel_values_videos):  # tower -> per-frame reducer -> projector
        encoded = inner.encode_video_frames(pixel_values_videos)
        return inner.video_tokens(
            inner.reduce_video_frames(encoded, pixel_values_videos.shape[1]), 8
        ).features

    compiled, graphs = compiled_once(video_tokens)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (0, 1):
            videos = torch.randn(1, 8, 3, 56, 56, generator=torch.Generator().manual_seed(seed))
            (ours,), (eager,) = compiled(videos), video_tokens(videos)
            torch.testing.assert_close(ours, eager)
            assert ours.shape[0] == 64
    assert len(graphs) == 1


def test_adaptive_counts_are_read_back_and_so_break_a_full_graph():
    """Adaptive PruMerge reads its per-image counts back (that is what adapts): fullgraph refuses it."""
    features, keys = torch.randn(2, 64, 8), torch.randn(2, 64, 4)
    attention = torch.rand(2, 64).softmax(-1)
    compiled, _ = compiled_once(lambda f, a, k: reduce_visual_tokens(f, a, k, ReductionSettings()).features)
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):
        compiled(features, attention, keys)


def budget_layout_prompt(model, budget: int, rows: int = 2) -> dict:
    """Prompts whose `<image>` runs hold the budget's tokens, as a fixed-budget folder's processor writes them."""
    image = model.config.image_token_id
    input_ids = torch.tensor([[1, 20, 21, *[image] * budget, 22, 23]] * rows)
    input_ids[0, :2] = model.config.text_config.pad_token_id  # the first row left-padded
    attention_mask = (input_ids != model.config.text_config.pad_token_id).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("budget", [16, 24])
def test_a_fixed_budget_prefill_compiles_whole_from_pixels_to_logits(budget):
    """With prompts in the budget's layout, nothing is read back anywhere in the forward: tower, reducer,
    projector, the tokens' placement and the language model are one graph, reused for new pixels."""
    model = tiny_model(seed=1, token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=budget)
    prompt = budget_layout_prompt(model, budget)
    compiled, graphs = compiled_once(model)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (0, 1):
            pixel_values = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(seed))
            ours, eager = (
                compiled(**prompt, pixel_values=pixel_values),
                model(**prompt, pixel_values=pixel_values),
            )
            torch.testing.assert_close(ours.logits, eager.logits)
            assert ours.visual_token_counts == eager.visual_token_counts == [budget, budget]
    assert len(graphs) == 1


def test_a_compiled_forward_refuses_a_prompt_not_in_the_budget_layout():
    """Stock's layout (a placeholder per patch) needs the layout read back to compact: a compiled forward
    refuses it on the device instead of placing tokens wrongly; run eagerly, or build the budget's prompt."""
    model = tiny_model(seed=1, token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=16)
    prompt = budget_layout_prompt(model, 196)
    compiled, _ = compiled_once(model)
    with torch.no_grad(), pytest.raises(RuntimeError, match="one `<image>` placeholder per reduced token"):
        compiled(**prompt, pixel_values=torch.randn(2, 3, 56, 56))
    with torch.no_grad():
        assert model(**prompt, pixel_values=torch.randn(2, 3, 56, 56)).visual_token_counts == [16, 16]
