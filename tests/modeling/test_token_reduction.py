"""The vectorised PruMerge reducer against the per-token loop oracle, and its edge cases."""

import math

import numpy as np
import pytest
import torch

from llava_prumerge import REDUCTION_DEFAULTS, class_attention, reduce_visual_tokens
from llava_prumerge.errors import VisualInputError
from llava_prumerge.modeling.token_reduction import iqr_outlier_counts
from llava_prumerge.testing.reducer_loop import reduce_visual_tokens_loop


def make_inputs(batch=3, patches=576, channels=48, key_dim=32, outliers=20, seed=0, dtype=torch.float64):
    """Random features/keys and a realistic [CLS] attention: a few large outliers over a flat floor."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, patches, channels, generator=generator, dtype=dtype)
    keys = torch.randn(batch, patches, key_dim, generator=generator, dtype=dtype)
    logits = torch.randn(batch, patches, generator=generator, dtype=dtype)
    for image in range(batch):
        hot = torch.randperm(patches, generator=generator)[: outliers + 3 * image]
        logits[image, hot] += 4 + 3 * torch.rand(hot.numel(), generator=generator, dtype=dtype)
    return features, logits.softmax(dim=-1), keys


def heavy_tailed_inputs(seed, patches=576, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, patches, 40, generator=generator, dtype=dtype)
    keys = torch.randn(2, patches, 24, generator=generator, dtype=dtype)
    pareto = torch.rand(2, patches, generator=generator, dtype=dtype).pow(-1.5)  # heavy tail
    return features, pareto / pareto.sum(dim=1, keepdim=True), keys


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_matches_loop_implementation(method, adaptive, seed):
    for features, attention, keys in (make_inputs(seed=seed), heavy_tailed_inputs(seed)):
        reduced = reduce_visual_tokens(features, attention, keys, token_reduction=method, adaptive=adaptive)
        tokens, centers = reduce_visual_tokens_loop(features, attention, keys, method, adaptive)
        for image in range(features.shape[0]):
            assert reduced.centers[image].tolist() == centers[image]
            torch.testing.assert_close(reduced.features[image], tokens[image], rtol=0, atol=1e-10)


@pytest.mark.parametrize("patches", [576, 577, 196, 50, 2304])
def test_matches_loop_for_other_patch_counts(patches):
    features, attention, keys = make_inputs(batch=2, patches=patches, outliers=max(2, patches // 30))
    for method in ("prumerge", "prumerge_plus"):
        reduced = reduce_visual_tokens(features, attention, keys, token_reduction=method)
        tokens, centers = reduce_visual_tokens_loop(features, attention, keys, method)
        for image in range(2):
            assert reduced.centers[image].tolist() == centers[image]
            torch.testing.assert_close(reduced.features[image], tokens[image], rtol=0, atol=1e-10)


def test_mean_weighting_matches_loop():
    features, attention, keys = make_inputs(seed=7)
    reduced = reduce_visual_tokens(features, attention, keys, merge_weighting="mean")
    tokens, _ = reduce_visual_tokens_loop(features, attention, keys, merge_weighting="mean")
    for image in range(3):
        torch.testing.assert_close(reduced.features[image], tokens[image], rtol=0, atol=1e-10)


def test_float32_matches_loop_within_tolerance():
    features, attention, keys = make_inputs(seed=3, dtype=torch.float32)
    reduced = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus")
    tokens, centers = reduce_visual_tokens_loop(features, attention, keys, "prumerge_plus")
    for image in range(3):
        assert reduced.centers[image].tolist() == centers[image]
        torch.testing.assert_close(reduced.features[image], tokens[image], rtol=1e-5, atol=1e-5)


def published_outlier_count(values: np.ndarray) -> int:
    """The published `outlier_dectection`, verbatim in its arithmetic."""
    q1 = np.percentile(values, 25)
    q3 = np.percentile(values, 75)
    upper_bound = q3 + 1.5 * (q3 - q1)
    return len(np.where(values > upper_bound)[0])


@pytest.mark.parametrize("source_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_iqr_counts_bit_exact_with_published_numpy(source_dtype):
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(300, 576, generator=generator) * torch.rand(300, 1, generator=generator) * 3
    attention = logits.softmax(dim=-1).to(source_dtype)  # as the model computes it
    ours = iqr_outlier_counts(attention, 1.5).tolist()
    published = [published_outlier_count(row) for row in attention.float().numpy()]
    assert ours == published


def test_counts_adapt_to_the_number_of_outliers():
    counts = []
    for outliers in (5, 20, 60):
        features, attention, keys = make_inputs(batch=1, outliers=outliers, seed=outliers)
        counts.append(reduce_visual_tokens(features, attention, keys).num_tokens[0])
    assert counts[0] < counts[1] < counts[2]
    assert counts[0] >= 6  # 5 outliers + the summary token


def test_each_image_is_reduced_independently_of_its_batch():
    features, attention, keys = make_inputs(batch=4, dtype=torch.float32)
    for method in ("prumerge", "prumerge_plus"):
        batched = reduce_visual_tokens(features, attention, keys, token_reduction=method)
        for image in range(4):
            alone = reduce_visual_tokens(
                features[image : image + 1],
                attention[image : image + 1],
                keys[image : image + 1],
                token_reduction=method,
            )
            assert torch.equal(alone.centers[0], batched.centers[image])
            torch.testing.assert_close(alone.features[0], batched.features[image], rtol=1e-6, atol=1e-6)


def test_gradients_flow_to_features_and_attention():
    features, attention, keys = make_inputs(batch=2, dtype=torch.float32)
    features.requires_grad_(True)
    attention.requires_grad_(True)
    reduced = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus")
    torch.cat(reduced.features).pow(2).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert attention.grad is not None and attention.grad.abs().sum() > 0


def test_uniform_attention_has_zero_iqr_and_keeps_one_center():
    features, _, keys = make_inputs(batch=2)
    flat = torch.full((2, 576), 1 / 576, dtype=torch.float64)
    for method in ("prumerge", "prumerge_plus"):
        reduced = reduce_visual_tokens(features, flat, keys, token_reduction=method)
        assert all(centers[0] == 0 for centers in reduced.centers)  # the floor: one center, ties to index 0
    assert reduce_visual_tokens(features, flat, keys).num_tokens == [2, 2]


def test_prumerge_plus_stride_floor_when_the_ratio_is_above_one_third():
    # Two patches, one center: r = 1/2, so the published stride int(int(1/r)/3) is 0 (a crash there).
    features, _, keys = make_inputs(batch=1, patches=2, outliers=0)
    attention = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    reduced = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus")
    assert reduced.centers[0].tolist() == [1, 0]  # the center, then patch 0 sampled (stride floored)
    assert reduced.num_tokens == [2]  # nothing left over: no (all-zero) summary token
    tokens, centers = reduce_visual_tokens_loop(features, attention, keys, "prumerge_plus")
    assert reduced.centers[0].tolist() == centers[0]
    torch.testing.assert_close(reduced.features[0], tokens[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("tied", [97, 120, 143])  # above N / 6, below N / 4 (where Q3 would rise)
def test_prumerge_plus_on_nearly_flat_attention_keeps_a_bounded_count(tied):
    """Flat attention with `tied` patches a hair above it: Q1 = Q3, so every one of them is an IQR
    outlier; past a sixth of the patches the published stride would sample every patch (or crash)."""
    features, _, keys = make_inputs(batch=1, patches=576, outliers=0)
    attention = torch.full((1, 576), 1.0, dtype=torch.float64)
    attention[0, torch.randperm(576, generator=torch.Generator().manual_seed(tied))[:tied]] += 1e-4
    reduced = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus")
    assert int(iqr_outlier_counts(attention, 1.5)) == tied
    assert len(reduced.centers[0]) <= tied + 576 // 2
    assert reduced.num_tokens[0] < 576
    tokens, centers = reduce_visual_tokens_loop(features, attention, keys, "prumerge_plus")
    assert reduced.centers[0].tolist() == centers[0]
    torch.testing.assert_close(reduced.features[0], tokens[0], rtol=0, atol=1e-10)


def test_merge_k_larger_than_candidates_is_clamped():
    features, attention, keys = make_inputs(batch=2, patches=9, outliers=2)
    reduced = reduce_visual_tokens(features, attention, keys, merge_k=1000)
    assert all(n.shape[1] == 8 for n in reduced.neighbors)
    tokens, _ = reduce_visual_tokens_loop(features, attention, keys, merge_k=1000)
    for image in range(2):
        torch.testing.assert_close(reduced.features[image], tokens[image], rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("target", ["features", "attention", "keys"])
def test_non_finite_inputs_raise_a_clear_error(bad, target):
    inputs = dict(zip(("features", "attention", "keys"), make_inputs(batch=1), strict=True))
    inputs[target][0, 3] = bad
    with pytest.raises(ValueError, match=f"{target} contains NaN or inf"):
        reduce_visual_tokens(**inputs)


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus", "sequential", "spatial", "none"])
def test_non_finite_feature_in_an_output_token_raises(method):
    features, attention, keys = make_inputs(batch=2)
    kept = reduce_visual_tokens(features, attention, keys, token_reduction=method).centers[1][0]
    features[1, kept, 5] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        reduce_visual_tokens(features, attention, keys, token_reduction=method)


def test_non_finite_values_that_reach_no_token_change_nothing():
    """Without the summary token, a patch no token absorbs is not read; keys are not read unmerged."""
    features, attention, keys = make_inputs(batch=1)
    fields = {"summary_token": False, "merge_k": 2}
    clean = reduce_visual_tokens(features, attention, keys, **fields)
    read = set(clean.centers[0].tolist()) | set(clean.neighbors[0].flatten().tolist())
    unread = next(patch for patch in range(features.shape[1]) if patch not in read)
    features[0, unread] = float("nan")
    reduced = reduce_visual_tokens(features, attention, keys, **fields)
    torch.testing.assert_close(reduced.features[0], clean.features[0], rtol=0, atol=0)
    keys[0, unread] = float("inf")
    unmerged = reduce_visual_tokens(features, attention, keys, merge=False, summary_token=False)
    assert torch.isfinite(unmerged.features[0]).all()
    with pytest.raises(ValueError, match="keys contains NaN or inf"):
        reduce_visual_tokens(features, attention, keys, **fields)


def test_non_finite_values_read_only_by_batch_padding_change_nothing():
    """An image with fewer tokens than its batch-mate is padded inside the reducer; the padding reads
    patches of its own, which must not raise when no real token reads them."""
    features, attention, keys = make_inputs(batch=2)
    fields = {"summary_token": False, "merge_k": 2}
    clean = reduce_visual_tokens(features, attention, keys, **fields)
    assert clean.num_tokens[0] < clean.num_tokens[1]
    selected = set(clean.centers[0].tolist())
    read = selected | set(clean.neighbors[0].flatten().tolist())
    left_over = [patch for patch in range(features.shape[1]) if patch not in selected]  # ascending
    padding_rows = left_over[: clean.num_tokens[1] - clean.num_tokens[0]]  # the slots padding image 0
    unread = next(patch for patch in padding_rows if patch not in read)
    features[0, unread] = float("nan")
    reduced = reduce_visual_tokens(features, attention, keys, **fields)
    for ours, expected in zip(reduced.features, clean.features, strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_shape_mismatches_raise_clear_errors():
    features, attention, keys = make_inputs(batch=2)
    with pytest.raises(ValueError, match="attention must be"):
        reduce_visual_tokens(features, attention[:, 1:], keys)
    with pytest.raises(ValueError, match="keys must be"):
        reduce_visual_tokens(features, attention, keys[:, 1:])
    with pytest.raises(ValueError, match="features must be"):
        reduce_visual_tokens(features[0], attention, keys)


def test_empty_batch_gives_empty_result():
    features, attention, keys = make_inputs(batch=1)
    reduced = reduce_visual_tokens(features[:0], attention[:0], keys[:0])
    assert reduced.features == [] and reduced.centers == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("token_reduction", "tome"),
        ("merge_weighting", "max"),
        ("token_order", "random"),
        ("reduction_ratio", 0.0),
        ("reduction_ratio", 1.5),
        ("num_visual_tokens", 0),
        ("iqr_scale", -1.0),
        ("merge_k", -2),
        ("adaptive", "yes"),
    ],
)
def test_invalid_fields_name_the_field(field, value):
    features, attention, keys = make_inputs(batch=1)
    with pytest.raises(ValueError, match=field):
        reduce_visual_tokens(features, attention, keys, **{field: value})


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
@pytest.mark.parametrize("budget", [2, 33, 64, 128, 192, 400])
@pytest.mark.parametrize("summary_token", [True, False])
def test_fixed_budget_gives_exact_counts(method, budget, summary_token):
    features, attention, keys = make_inputs(batch=3)
    reduced = reduce_visual_tokens(
        features, attention, keys, token_reduction=method, adaptive=False,
        num_visual_tokens=budget, summary_token=summary_token,
    )  # fmt: skip
    assert reduced.num_tokens == [budget] * 3
    for centers in reduced.centers:
        assert len(set(centers.tolist())) == centers.numel()  # no patch twice


def test_fixed_budget_too_small_for_summary_token():
    with pytest.raises(ValueError, match="num_visual_tokens=1"):
        reduce_visual_tokens(*make_inputs(batch=1), adaptive=False, num_visual_tokens=1)


def test_fixed_ratio_prumerge_plus_keeps_duplicate_samples_as_trained():
    features, attention, keys = make_inputs(batch=2, outliers=60)
    reduced = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus", adaptive=False)
    assert reduced.num_tokens == [72 + 72 + 1] * 2
    assert reduced.centers[0][72:].tolist() == list(range(4, 575, 8))


def test_spatial_token_order_is_raster_order_of_the_same_tokens():
    features, attention, keys = make_inputs(batch=2)
    by_attention = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus")
    raster = reduce_visual_tokens(
        features, attention, keys, token_reduction="prumerge_plus", token_order="spatial"
    )
    for image in range(2):
        order = by_attention.centers[image].argsort()
        assert torch.equal(raster.centers[image], by_attention.centers[image][order])
        torch.testing.assert_close(raster.features[image][:-1], by_attention.features[image][:-1][order])
        torch.testing.assert_close(raster.features[image][-1], by_attention.features[image][-1])


def test_without_merge_tokens_are_the_selected_patches():
    features, attention, keys = make_inputs(batch=2)
    reduced = reduce_visual_tokens(features, attention, keys, merge=False, summary_token=False)
    for image in range(2):
        torch.testing.assert_close(reduced.features[image], features[image, reduced.centers[image]])
        assert reduced.neighbors[image].shape[1] == 0


def test_baselines_and_none():
    features, attention, keys = make_inputs(batch=2)
    sequential = reduce_visual_tokens(
        features, attention, keys, token_reduction="sequential", num_visual_tokens=64
    )
    assert sequential.centers[0].tolist() == list(range(64))
    torch.testing.assert_close(sequential.features[1], features[1, :64])
    spatial = reduce_visual_tokens(features, attention, keys, token_reduction="spatial", num_visual_tokens=64)
    grid = [r * 24 + c for r in (1, 4, 7, 10, 13, 16, 19, 22) for c in (1, 4, 7, 10, 13, 16, 19, 22)]
    assert spatial.centers[0].tolist() == grid
    default_count = reduce_visual_tokens(features, attention, keys, token_reduction="spatial")
    assert default_count.num_tokens == [72, 72]
    none = reduce_visual_tokens(features, attention, keys, token_reduction="none")
    assert none.num_tokens == [576, 576]
    assert torch.equal(none.features[0], features[0])


def test_class_attention_reference_is_one_head_over_the_full_width():
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 2, 17, 64, generator=generator)
    full = torch.softmax(queries @ keys.transpose(1, 2) * 64**-0.5, dim=-1)  # the published computation
    torch.testing.assert_close(class_attention(queries, keys), full[:, 0, 1:])


def test_class_attention_heads_mean_averages_true_head_attention():
    generator = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(2, 2, 17, 64, generator=generator)
    heads = 4
    q = queries.view(2, 17, heads, 16).transpose(1, 2)
    k = keys.view(2, 17, heads, 16).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(16), dim=-1).mean(dim=1)[:, 0, 1:]
    torch.testing.assert_close(class_attention(queries, keys, "heads_mean", num_heads=heads), expected)
    with pytest.raises(ValueError, match="num_heads"):
        class_attention(queries, keys, "heads_mean")
    with pytest.raises(ValueError, match="queries and keys"):
        class_attention(queries, keys[:, 1:])


def test_class_attention_keeps_the_projection_dtype():
    queries, keys = torch.randn(2, 1, 9, 32, dtype=torch.float16)
    assert class_attention(queries, keys).dtype == torch.float16


def test_defaults_are_the_published_reducer():
    assert REDUCTION_DEFAULTS["token_reduction"] == "prumerge"
    assert REDUCTION_DEFAULTS["adaptive"] is True
    assert REDUCTION_DEFAULTS["merge_k"] == 32
    assert REDUCTION_DEFAULTS["iqr_scale"] == 1.5
    assert REDUCTION_DEFAULTS["summary_token"] is True


@pytest.mark.parametrize(
    "fields",
    [
        {"adaptive": False, "reduction_ratio": 1.0},
        {"adaptive": False, "num_visual_tokens": 40},
        {"token_reduction": "prumerge_plus", "adaptive": False, "reduction_ratio": 1.0},
        {"token_reduction": "prumerge_plus", "iqr_scale": 0.0},
    ],
)
def test_never_more_tokens_than_patches_and_no_empty_summary_token(fields):
    """Keeping every patch leaves nothing to summarize; PruMerge+'s samples never outnumber the patches."""
    features, attention, keys = make_inputs(batch=2, patches=16, outliers=2)
    reduced = reduce_visual_tokens(features, attention, keys, **fields)
    assert all(count <= 16 for count in reduced.num_tokens), reduced.num_tokens
    assert not any(bool((tokens == 0).all(-1).any()) for tokens in reduced.features)


def test_tiny_ratios_degenerate_inputs_and_integer_features_are_clear():
    features, attention, keys = make_inputs(batch=1, patches=16, outliers=2)
    tiny = reduce_visual_tokens(
        features, attention, keys, token_reduction="prumerge_plus", adaptive=False, reduction_ratio=1e-6
    )
    assert tiny.num_tokens == [2]  # one center and the summary token
    with pytest.raises(VisualInputError, match="no patches"):
        reduce_visual_tokens(features[:, :0], attention[:, :0], keys[:, :0])
    with pytest.raises(VisualInputError, match="must be floating point, got torch.int64"):
        reduce_visual_tokens(features.long(), attention, keys)
