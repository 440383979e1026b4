"""Where each patch's importance comes from: the [CLS] row, or a stand-in for towers without one (SigLIP).

The stand-ins are checked against a per-patch loop, batch-invariant, selectable on CLIP towers too, and a
LLaVA model with a SigLIP tower reduces with them (and equals stock with `none`).
"""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from llava_prumerge import LlavaPruMergeForConditionalGeneration
from llava_prumerge.errors import ReductionSettingsError
from llava_prumerge.modeling.reduction_settings import STAND_IN_IMPORTANCE, ReductionSettings
from llava_prumerge.modeling.token_reduction import class_attention, patch_importance
from llava_prumerge.testing.model_tester import stock_twin
from llava_prumerge.testing.reducer_loop import importance_loop
from llava_prumerge.testing.tiny import tiny_config, tiny_siglip_vision_config, tiny_tokenizer

STAND_INS = ["mean_query", "mean_attention"]


def projections(batch=3, length=50, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, batch, length, dim, generator=generator) * 2


@pytest.mark.parametrize("score", STAND_INS)
def test_the_stand_ins_match_a_per_patch_loop(score):
    queries, keys = projections()
    expected = importance_loop(queries, keys, score)
    scores = patch_importance(queries, keys, score, class_token=False)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores.sum(-1), torch.ones(3))  # a distribution over the patches
    # with a [CLS] token first, the stand-ins read the patches only
    with_class = patch_importance(
        torch.cat([keys[:, :1], queries], 1), torch.cat([queries[:, :1], keys], 1), score
    )
    torch.testing.assert_close(with_class, scores)


@pytest.mark.parametrize("score", ["cls", *STAND_INS])
@pytest.mark.parametrize("mode", ["reference", "heads_mean"])
def test_scores_are_batch_invariant(score, mode):
    queries, keys = projections(batch=4)
    together = patch_importance(queries, keys, score, mode, num_heads=4)
    alone = torch.cat(
        [
            patch_importance(q[None], k[None], score, mode, num_heads=4)
            for q, k in zip(queries, keys, strict=True)
        ]
    )
    torch.testing.assert_close(together, alone, rtol=0, atol=0)


def test_the_cls_score_is_the_published_class_attention_and_auto_picks_it_where_there_is_a_cls_token():
    queries, keys = projections()
    published = class_attention(queries, keys)
    assert torch.equal(patch_importance(queries, keys, "cls"), published)
    assert torch.equal(patch_importance(queries, keys, "auto"), published)
    stand_in = patch_importance(queries, keys, "auto", class_token=False)
    assert torch.equal(stand_in, patch_importance(queries, keys, STAND_IN_IMPORTANCE, class_token=False))
    with pytest.raises(ReductionSettingsError, match="this vision tower has none"):
        patch_importance(queries, keys, "cls", class_token=False)
    with pytest.raises(ReductionSettingsError, match="importance='nope' is not supported"):
        ReductionSettings(importance="nope")


def siglip_llava(strategy: str, **reduction_fields):
    """A tiny LLaVA whose tower is SigLIP (no [CLS] token), random weights."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, **reduction_fields)
    config = type(config)(
        **{
            **config.to_dict(),
            "vision_config": tiny_siglip_vision_config(),
            "vision_feature_select_strategy": strategy,
        }
    )
    torch.manual_seed(0)
    return LlavaPruMergeForConditionalGeneration(config).eval()


def siglip_inputs(model, images: int = 2, seed: int = 0):
    """input_ids with as many placeholders per image as the stock processor writes, and random pixels."""
    count = model.model.image_placeholder_count()
    text = torch.tensor([1, 30, 31] + [model.config.image_token_id] * count + [32, 33])
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(images, 3, 56, 56, generator=generator) * 2
    return {"input_ids": text.repeat(images, 1), "pixel_values": pixels}


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_a_siglip_tower_without_reduction_equals_stock(strategy):
    model = siglip_llava(strategy, token_reduction="none")
    inputs = siglip_inputs(model)
    assert model.model.image_placeholder_count() == 196 - (
        strategy == "default"
    )  # stock drops row 0 with "default"
    stock = stock_twin(model.config, seed=0)
    assert isinstance(stock, LlavaForConditionalGeneration)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("score", ["auto", *STAND_INS])
def test_a_siglip_tower_reduces_with_a_stand_in_score(score):
    model = siglip_llava("full", token_reduction="prumerge", importance=score)
    inputs = siglip_inputs(model, images=3)
    with torch.no_grad():
        out = model(**inputs)
        alone = [model(**{key: value[i : i + 1] for key, value in inputs.items()}) for i in range(3)]
    counts = out.visual_token_counts
    assert all(2 <= count < 196 / 2 for count in counts), counts
    assert counts == [a.visual_token_counts[0] for a in alone]
    with pytest.raises(ReductionSettingsError, match="this vision tower has none"), torch.no_grad():
        model(**inputs, reduction=model.config.reduction_settings.replace(importance="cls"))


def test_a_clip_tower_can_use_the_stand_ins():
    """Selectable on towers with a [CLS] token too, to compare: the reduction layer's patch rows, scored."""
    tokenizer = tiny_tokenizer()
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    for score in STAND_INS:
        torch.manual_seed(0)
        model = LlavaPruMergeForConditionalGeneration(tiny_config(tokenizer, importance=score)).eval()
        tower = model.model.vision_tower
        layer = getattr(tower, "vision_model", tower).encoder.layers[-1]
        with torch.no_grad():
            encoded = model.model.encode_patches(pixels)
            normed = layer.layer_norm1(
                tower(pixels, output_hidden_states=True).hidden_states[-2]
            )  # its input
            queries, keys = layer.self_attn.q_proj(normed)[:, 1:], layer.self_attn.k_proj(normed)[:, 1:]
        torch.testing.assert_close(
            encoded.attention.double(), importance_loop(queries, keys, score), rtol=1e-4, atol=1e-7
        )
