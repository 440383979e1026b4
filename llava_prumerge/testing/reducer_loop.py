"""A straightforward per-image, per-token loop implementation of the PruMerge reducer.

It follows the structure of the published reducer (numpy quartiles, a Python loop over every
kept token, candidates rebuilt by concatenation for each one) and is deliberately written
independently of `llava_prumerge.modeling.token_reduction`: the tests use it as the oracle for
the vectorised reducer, and `llava-prumerge bench --reducer-only` times the two against each other.
Only the reducer's reference behavior is covered (summary token on, attention order).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _numpy_outlier_count(attention: torch.Tensor, iqr_scale: float) -> int:
    dtype = torch.float64 if attention.dtype == torch.float64 else torch.float32
    values = attention.detach().to(dtype).cpu().numpy().flatten()
    q1 = np.percentile(values, 25)
    q3 = np.percentile(values, 75)
    upper_bound = q3 + values.dtype.type(iqr_scale) * (q3 - q1)
    return len(np.where(values > upper_bound)[0])


def _complement(indices: list[int], num_patches: int) -> list[int]:
    """The published `complement_idx`: zero out the selected positions, sort, drop len(indices)."""
    masked = list(range(num_patches))
    for index in indices:
        masked[index] = 0
    return sorted(masked)[len(indices) :]


def reduce_visual_tokens_loop(
    features: torch.Tensor,
    attention: torch.Tensor,
    keys: torch.Tensor,
    token_reduction: str = "prumerge",
    adaptive: bool = True,
    reduction_ratio: float = 1 / 8,
    iqr_scale: float = 1.5,
    merge_k: int = 32,
    merge_weighting: str = "reference",
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """features [B, N, C], attention [B, N], keys [B, N, Dk] -> (per-image tokens, per-image centers)."""
    batch, num_patches, _ = features.shape
    out_tokens, out_centers = [], []
    for image in range(batch):
        x, a, key = features[image], attention[image], keys[image]
        if adaptive:
            ratio = max(1, _numpy_outlier_count(a, iqr_scale)) / num_patches
            num_centers = max(1, round(num_patches * ratio))
        else:
            ratio = reduction_ratio
            num_centers = max(1, int(num_patches * ratio))
        scores = a.detach().to(torch.promote_types(a.dtype, torch.float32)).tolist()
        by_attention = sorted(range(num_patches), key=lambda i: (-scores[i], i))
        centers = by_attention[:num_centers]
        if token_reduction == "prumerge_plus":
            step = int(1 / ratio)
            if adaptive:
                stride = max(2, int(step / 3))  # the library's floor (see select_tokens)
                centers = centers + [i for i in range(0, num_patches - 1, stride) if i not in centers]
            else:
                centers = centers + list(range(int(step / 2), num_patches - 1, step))
        others = _complement(centers, num_patches)

        # As published: gather the kept and the other patches once, then for every kept token
        # rebuild its candidate set (the other kept tokens, then the other patches) by concatenation.
        kept_x, kept_a, kept_keys = x[centers], a[centers].to(x.dtype), F.normalize(key[centers], p=2, dim=-1)
        other_x, other_a, other_keys = x[others], a[others].to(x.dtype), F.normalize(key[others], p=2, dim=-1)
        tokens = []
        for i in range(len(centers)):
            candidate_x = torch.cat([kept_x[:i], kept_x[i + 1 :], other_x])
            candidate_a = torch.cat([kept_a[:i], kept_a[i + 1 :], other_a])
            candidate_keys = torch.cat([kept_keys[:i], kept_keys[i + 1 :], other_keys])
            similarity = kept_keys[i] @ candidate_keys.T  # [candidates]
            nearest = similarity.topk(min(merge_k, candidate_keys.shape[0])).indices
            weights = candidate_a[nearest][:, None]
            absorbed = (candidate_x[nearest] * weights).sum(dim=0)
            if merge_weighting == "mean":
                tokens.append((kept_a[i] * kept_x[i] + absorbed) / (kept_a[i] + weights.sum()))
            else:
                tokens.append(kept_x[i] + absorbed)
        summary = [(other_x * other_a[:, None]).sum(dim=0)] if len(others) else []  # none when all are kept
        out_tokens.append(torch.stack(tokens + summary))
        out_centers.append(centers)
    return out_tokens, out_centers


def importance_loop(queries: torch.Tensor, keys: torch.Tensor, score: str) -> torch.Tensor:
    """The stand-ins for the [CLS] row, one patch at a time, in float64: queries and keys [B, N, D] of the
    patches (one head over the full width) -> [B, N].

    "mean_query": patch j's share of the attention of the patches' mean query; "mean_attention": the mean
    over queries i of patch j's share of query i's attention.
    """
    batch, num_patches, dim = queries.shape
    scale = dim**-0.5
    out = torch.empty(batch, num_patches, dtype=torch.float64)
    for image in range(batch):
        q, k = queries[image].double(), keys[image].double()
        if score == "mean_query":
            mean_query = sum(q[i] for i in range(num_patches)) / num_patches
            weights = [torch.exp(mean_query @ k[j] * scale) for j in range(num_patches)]
            total = sum(weights)
            for j in range(num_patches):
                out[image, j] = weights[j] / total
        else:
            shares = torch.zeros(num_patches, dtype=torch.float64)
            for i in range(num_patches):
                row = torch.exp(k @ q[i] * scale)  # query i's weights over the patches
                shares += row / row.sum()
            out[image] = shares / num_patches
    return out
