# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""PruMerge visual-token reduction as pure tensor functions.

LLaVA-PruMerge (Shang et al., arXiv 2403.15388) keeps the patches whose [CLS] attention is an
interquartile-range outlier (AITS) and lets each kept token absorb its key-nearest patches
(TS). The work is split in two, ToMe-style: *deciding* (which patches are kept, which
neighbors each kept token absorbs: a small plan of indices, made without gradients) and
*applying* (gathering and summing features, differentiable, used in LoRA training).

Shapes: B images, N patches (576 for CLIP ViT-L/14-336), C feature channels, Dk key channels.
This module imports nothing but torch and its sibling modules, so it travels inside Hub folders as
remote code.
"""

from __future__ import annotations

import contextvars
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import NonFiniteError, ReductionSettingsError, VisualInputError
from .reduction_settings import CLASS_ATTENTION_MODES, ReductionSettings, resolved_importance


@dataclass
class ReducedTokens:
    """The reducer's output, per image (counts differ between images).

    features: one [n_i, C] tensor per image; the summary token, when on, is last.
    centers: one LongTensor [m_i] per image: the patch index behind each output token except the
        summary token, in output order.
    neighbors: one LongTensor [m_i, k] per image: the patches each output token absorbed
        (k = 0 when nothing was merged).
    """

    features: list[torch.Tensor]
    centers: list[torch.Tensor]
    neighbors: list[torch.Tensor]

    @property
    def num_tokens(self) -> list[int]:
        return [int(x.shape[0]) for x in self.features]

    @property
    def neighbours(self) -> list[torch.Tensor]:
        """Deprecated British spelling of `neighbors` (llava-prumerge 0.1)."""
        warnings.warn("ReducedTokens.neighbours is deprecated; use .neighbors", FutureWarning, stacklevel=2)
        return self.neighbors


@dataclass(frozen=True)
class Selection:
    """Which patches become output tokens (see `select_tokens`).

    slots [B, N]: per image the patch behind every slot, the selected ones first.
    num_selected [B]: how many slots of each image are selected.
    counts: the same numbers on the host, where known when the selection is made: fixed by the settings
        (budgets, ratios, the baselines: no read), or read at once where reads are free (a CPU).
        None for an adaptive selection on an accelerator: its counts are read back once, with the finished
        tokens (`reduce_visual_tokens`), so that nothing waits for them in between.
    """

    slots: torch.Tensor
    num_selected: torch.Tensor
    counts: list[int] | None = None

    @classmethod
    def of_fixed_count(cls, slots: torch.Tensor, count: int) -> Selection:
        """Every image selects `count` slots."""
        batch = slots.shape[0]
        return cls(slots, torch.full((batch,), count, device=slots.device), [count] * batch)

    @property
    def width(self) -> int:
        """The slots every image's tokens are planned and merged over: the most any image selects where the
        counts are known, else all of them (the rows past an image's count are dropped at the end)."""
        return self.slots.shape[1] if self.counts is None else max(self.counts)


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value of `device` on the host costs no wait: on a CPU the host ran every operation
    already, so an adaptive selection reads its counts at once and plans the merge for them alone; on an
    accelerator the merge is planned for every slot instead, which costs little there, and the counts
    come back with the tokens."""
    return device.type == "cpu"


# ---------------------------------------------------------------- what the host reads back from the device


@dataclass
class HostReads:
    """The values the host needs from the device during one forward, fetched together.

    Every host read of a device value is a synchronization: the host waits until the device has finished
    all queued work, and queues nothing meanwhile. Inside `batched_host_reads()`, finite checks, adaptive
    counts and the prompt's placeholder layout queue their tensors here instead of reading them, and the
    first value the host needs brings back everything queued so far in one copy: a forward of a fixed
    budget reads once (at compaction), an adaptive one on an accelerator once too (its counts, with the
    checks and the layout). A failed check raises then. Under torch.compile nothing is queued or checked (as stock).
    """

    queued: list[torch.Tensor] = field(default_factory=list)  # flattened int64 tensors, read in order
    values: list[list[int]] = field(default_factory=list)  # those read so far, same order
    checks: list[tuple[int, str]] = field(default_factory=list)  # (index of a finite flag, its error message)
    prefetched: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # name -> (source, index)
    transfers: int = 0  # how many times the host waited for the device

    def queue(self, tensor: torch.Tensor) -> int:
        """Queue `tensor` (any shape, integer or bool) for the next read; its index for `value`."""
        self.queued.append(tensor.detach().reshape(-1).long())
        return len(self.queued) - 1

    def value(self, index: int) -> list[int]:
        """The flattened values of queued tensor `index`: read now, with everything queued, if not yet."""
        if index >= len(self.values):
            self.read()
        return self.values[index]

    def read(self) -> None:
        """Everything queued and not yet read, in one device-to-host copy per device; failed checks raise."""
        pending = self.queued[len(self.values) :]
        if not pending:
            return
        by_device: dict[torch.device, list[int]] = {}
        for offset, tensor in enumerate(pending):
            by_device.setdefault(tensor.device, []).append(offset)
        read = [None] * len(pending)
        for offsets in by_device.values():
            flat = torch.cat([pending[offset] for offset in offsets]).tolist()
            self.transfers += 1
            start = 0
            for offset in offsets:
                size = pending[offset].numel()
                read[offset] = flat[start : start + size]
                start += size
        self.values.extend(read)
        for index, message in self.checks:
            if index < len(self.values) and not self.values[index][0]:
                self.checks = []
                raise NonFiniteError(message)


_HOST_READS: contextvars.ContextVar[HostReads | None] = contextvars.ContextVar(
    "prumerge_host_reads", default=None
)


def _active_host_reads() -> HostReads | None:
    """The `HostReads` of the enclosing `batched_host_reads` block; None outside one, and under torch.compile
    (which traces no context variable, and whose graphs read nothing back)."""
    return None if torch.compiler.is_compiling() else _HOST_READS.get()


@contextmanager
def batched_host_reads():
    """Within, host reads of device values are batched in one `HostReads` (see there), which is yielded; the
    outermost block reads the checks still unread when it ends, so that none is skipped."""
    if torch.compiler.is_compiling() or _HOST_READS.get() is not None:
        yield _active_host_reads()
        return
    reads = HostReads()
    token = _HOST_READS.set(reads)
    try:
        yield reads
        if any(index >= len(reads.values) for index, _ in reads.checks):
            reads.read()
    finally:
        _HOST_READS.reset(token)


def read_back(tensor: torch.Tensor) -> list[int]:
    """`tensor.tolist()` (flattened), fetched with everything queued when reads are batched."""
    reads = _active_host_reads()
    if reads is None:
        return tensor.reshape(-1).tolist()
    return reads.value(reads.queue(tensor))


def prefetch(name: str, tensor: torch.Tensor, source: torch.Tensor) -> None:
    """Where reads are batched, queue `tensor` (derived from `source`) to come back with the next read, for a
    later `host_copy(name, ...)` of the same source: the prompt's layout, fetched with an adaptive
    selection's counts."""
    reads = _active_host_reads()
    if reads is not None:
        reads.prefetched[name] = (source, reads.queue(tensor))


def host_copy(name: str, tensor: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`tensor` (derived from `source`) copied to the host: where reads are batched, the copy prefetched under
    `name` from the same source, else fetched now with everything queued."""
    reads = _active_host_reads()
    if reads is None:
        return tensor.cpu()
    known = reads.prefetched.get(name)
    index = known[1] if known is not None and known[0] is source else reads.queue(tensor)
    return torch.tensor(reads.value(index), dtype=torch.long).view(tensor.shape).to(tensor.dtype)


def class_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    mode: str = ReductionSettings.class_attention,
    num_heads: int | None = None,
) -> torch.Tensor:
    """[CLS]-to-patch attention [B, N] from q/k projections [B, 1+N, D] (CLS first).

    "reference" is the published one: a single head over the full width D, scale D^-0.5.
    "heads_mean" is the true multi-head attention of the layer, averaged over its heads.
    The result is rounded to the projections' dtype, as the published code (which computed it
    in the model dtype) saw it.
    """
    if queries.dim() != 3 or queries.shape != keys.shape:
        raise VisualInputError(
            f"queries and keys must both be [batch, 1 + patches, dim]; got {tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    if queries.shape[1] < 2:
        raise VisualInputError(
            f"need a [CLS] token and at least one patch, got sequence length {queries.shape[1]}"
        )
    q = _split_heads(queries[:, :1].float(), mode, num_heads)  # [B, H, 1, d]
    k = _split_heads(keys.float(), mode, num_heads)  # [B, H, 1+N, d]
    scores = q @ k.transpose(2, 3) * q.shape[-1] ** -0.5  # [B, H, 1, 1+N]
    attention = scores.softmax(dim=-1).mean(dim=1)[:, 0]  # [B, 1+N]
    return attention[:, 1:].to(queries.dtype)  # [B, N]


def patch_importance(
    queries: torch.Tensor,
    keys: torch.Tensor,
    score: str = ReductionSettings.importance,
    mode: str = ReductionSettings.class_attention,
    num_heads: int | None = None,
    class_token: bool = True,
) -> torch.Tensor:
    """Each patch's importance [B, N] from the reduction layer's q/k projections [B, T, D] (T = 1 + N with a
    [CLS] token first, else N), as `score` says (see `ReductionSettings.importance`).

    "cls" is `class_attention`. The stand-ins read the patch rows only: "mean_query" is the attention of one
    synthetic query, the patches' mean query, softmax(mean(q) K^T / sqrt(d)): one 1 x N row; "mean_attention"
    the attention each patch receives, averaged over the patches' queries (the N x N map is made one head at
    a time). `mode` combines heads as for the [CLS] row: one head over the full width ("reference"), or
    every head's attention, averaged ("heads_mean"). Rounded to the projections' dtype, as `class_attention`.
    """
    score = resolved_importance(score, class_token)
    if score == "cls":
        if not class_token:
            raise ReductionSettingsError(
                "importance='cls' reads the [CLS] token's attention, and this vision tower has none; use "
                "importance='auto' (or 'mean_query' / 'mean_attention')"
            )
        return class_attention(queries, keys, mode, num_heads)
    if score not in ("mean_query", "mean_attention"):
        raise ReductionSettingsError(f"importance={score!r} is not supported")
    patches = slice(1, None) if class_token else slice(None)
    q, k = (
        _split_heads(queries[:, patches].float(), mode, num_heads),
        _split_heads(keys[:, patches].float(), mode, num_heads),
    )
    scale = q.shape[-1] ** -0.5
    if score == "mean_query":
        attention = (q.mean(dim=2, keepdim=True) @ k.transpose(2, 3) * scale).softmax(dim=-1)[
            :, :, 0
        ]  # [B, H, N]
    else:
        attention = torch.stack(
            [
                (q[:, h] @ k[:, h].transpose(1, 2) * scale).softmax(dim=-1).mean(dim=1)
                for h in range(q.shape[1])
            ],
            dim=1,
        )  # [B, H, N]: per head, the mean over the queries of the [N, N] map
    return attention.mean(dim=1).to(queries.dtype)  # [B, N]


def _split_heads(projections: torch.Tensor, mode: str, num_heads: int | None) -> torch.Tensor:
    """[B, N, D] -> [B, H, N, D / H]: one head over the full width ("reference") or the layer's heads."""
    if mode == "reference":
        return projections[:, None]
    if mode != "heads_mean":
        raise ReductionSettingsError(
            f"class_attention={mode!r} is not supported; choose one of {list(CLASS_ATTENTION_MODES)}"
        )
    batch, length, dim = projections.shape
    if not num_heads or dim % num_heads:
        raise ReductionSettingsError(
            f"class_attention='heads_mean' needs num_heads dividing {dim}, got {num_heads!r}"
        )
    return projections.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)


def iqr_outlier_counts(attention: torch.Tensor, iqr_scale: float) -> torch.Tensor:
    """AITS: per image, how many attention values lie above Q3 + iqr_scale * (Q3 - Q1).

    Matches the published `numpy.percentile` computation bit for bit: linear interpolation and
    the fence in float32 for half/float32 input (float64 input stays float64).
    attention: [B, N] -> LongTensor [B].
    """
    values = attention.detach().to(torch.promote_types(attention.dtype, torch.float32))  # [B, N]
    return _outlier_counts_of_sorted(values.sort(dim=1).values, iqr_scale)


def _outlier_counts_of_sorted(ascending: torch.Tensor, iqr_scale: float) -> torch.Tensor:
    """`iqr_outlier_counts` of attention already sorted ascending along dim 1: [B, N] -> [B]."""
    dtype, num_patches = ascending.dtype, ascending.shape[1]

    def percentile(fraction: float) -> torch.Tensor:  # numpy's "linear" method and its _lerp
        position = fraction * (num_patches - 1)
        below = math.floor(position)
        above = min(below + 1, num_patches - 1)
        weight = position - below
        low, high = ascending[:, below], ascending[:, above]
        step = high - low
        if weight >= 0.5:
            return high - step * torch.tensor(1 - weight, dtype=dtype)
        return low + step * torch.tensor(weight, dtype=dtype)

    q1, q3 = percentile(0.25), percentile(0.75)  # [B]
    fence = q3 + torch.tensor(iqr_scale, dtype=dtype) * (q3 - q1)  # [B]
    return (ascending > fence[:, None]).sum(dim=1)


def _check_shapes(features: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor) -> None:
    if features.dim() != 3:
        raise VisualInputError(
            f"features must be [batch, patches, channels], got shape {tuple(features.shape)}"
        )
    batch, num_patches, _ = features.shape
    if tuple(attention.shape) != (batch, num_patches):
        raise VisualInputError(
            f"attention must be [batch, patches] = {(batch, num_patches)} to match features, got {tuple(attention.shape)}"
        )
    if keys.dim() != 3 or tuple(keys.shape[:2]) != (batch, num_patches):
        raise VisualInputError(
            f"keys must be [batch, patches, key_dim] with batch, patches = {(batch, num_patches)} (patch rows only, "
            f"no [CLS]), got {tuple(keys.shape)}"
        )


def raise_if_not_finite(tensor: torch.Tensor, message: str) -> None:
    """Raise NonFiniteError(message) when `tensor` holds a NaN or inf (one pass: a float32 sum is non-finite
    when some element is).

    Where host reads are batched (`batched_host_reads`), the flag is queued and raises at the next read;
    under torch.compile the check is left out, so that a compiled fixed-budget path has no host
    synchronization (a NaN then reaches the logits, as in stock models)."""
    if torch.compiler.is_compiling() or not tensor.is_floating_point():
        return
    finite = torch.isfinite(tensor.detach().sum(dtype=torch.promote_types(tensor.dtype, torch.float32)))
    reads = _active_host_reads()
    if reads is not None:
        reads.checks.append((reads.queue(finite), message))
    elif not finite:
        raise NonFiniteError(message)


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    raise_if_not_finite(
        tensor,
        f"{name} contains NaN or inf; check the pixel values and the vision tower's dtype (float16 overflow), "
        "then run again",
    )


def _spatial_grid(num_patches: int, count: int) -> list[int]:
    """`count` patch indices spread uniformly over the patch grid (raster order)."""
    count = min(count, num_patches)
    side, per_side = math.isqrt(num_patches), math.isqrt(count)
    if side * side == num_patches and per_side * per_side == count:
        rows = [int((i + 0.5) * side / per_side) for i in range(per_side)]
        return [r * side + c for r in rows for c in rows]
    return [int((i + 0.5) * num_patches / count) for i in range(count)]


def select_tokens(attention: torch.Tensor, settings: ReductionSettings) -> Selection:
    """Decide which patches become output tokens (the summary token counts as one when `settings` has it on).

    Returns the `Selection`: `slots` [B, N], the patch index of every slot: the selected patches first,
    in output order (attention centers by descending attention, then PruMerge+ spatial samples
    ascending), then the patches left over, ascending; `num_selected` [B], how many slots are selected;
    and that count as a number where the settings fix it. The left-over slots are the merge candidates
    and make the summary token.

    Floors where the published code divides by zero, crashes or stops reducing: at least one
    attention center; a PruMerge+ sampling stride of at least two. The published stride
    int(int(N / m) / 3) falls below two only when over a sixth of the patches are IQR outliers
    (nearly flat attention with ties above Q3, where the fence collapses): at one it samples every
    patch and at zero it crashes, while two keeps the count at most m + N / 2, continuous with the
    published stride at m = N / 6.
    """
    batch, num_patches = attention.shape
    positions = torch.arange(num_patches, device=attention.device)  # [N]
    if settings.token_reduction in ("sequential", "spatial"):
        return _baseline_slots(batch, num_patches, settings, attention.device)

    # Descending attention; ties go to the lower patch index.
    ranked = attention.detach().to(torch.promote_types(attention.dtype, torch.float32))
    ranked = ranked.sort(dim=1, descending=True, stable=True)
    order = ranked.indices  # [B, N]
    rank = torch.empty_like(order).scatter_(1, order, positions.expand(batch, -1))  # [B, N]: place in `order`
    centers = _center_counts(ranked.values, settings)  # per image: an int where fixed, else [B] on the device
    fixed_count = centers if isinstance(centers, int) else None
    limit = centers if fixed_count is not None else centers[:, None]
    is_center = rank < limit  # [B, N]
    if settings.token_reduction != "prumerge_plus":
        sampled = torch.zeros_like(is_center)
    elif settings.adaptive:
        # The published stride: s = int(int(1 / r) / 3) with r = m / N, samples 0, s, 2s, ... < N - 1;
        # computed on the device in float64, the very operations Python's floats make.
        strides = ((1.0 / (centers.double() / num_patches)).floor() / 3).floor().clamp(min=2).long()
        sampled = (positions % strides[:, None] == 0) & (positions < num_patches - 1) & ~is_center
    elif settings.num_visual_tokens is not None:
        sampled, num_samples = _budget_samples(is_center, fixed_count, settings)
        fixed_count += num_samples
    else:
        return _fixed_ratio_plus_slots(order, is_center, fixed_count, settings.reduction_ratio)

    key = torch.where(
        is_center, rank, torch.where(sampled, positions + num_patches, positions + 2 * num_patches)
    )
    slots = key.argsort(dim=1)  # [B, N]
    if fixed_count is not None:
        return Selection.of_fixed_count(slots, fixed_count)
    num_selected = is_center.sum(dim=1) + sampled.sum(dim=1)  # [B]
    return Selection(
        slots, num_selected, read_back(num_selected) if host_reads_are_free(slots.device) else None
    )


def _baseline_slots(
    batch: int, num_patches: int, settings: ReductionSettings, device: torch.device
) -> Selection:
    """The ablation baselines: the first n patches ("sequential") or a uniform grid of n ("spatial")."""
    count = settings.num_visual_tokens or max(1, int(num_patches * settings.reduction_ratio))
    if settings.token_reduction == "sequential":
        chosen = list(range(min(count, num_patches)))
    else:
        chosen = _spatial_grid(num_patches, count)
    positions = torch.arange(num_patches, device=device)
    selected = torch.zeros(num_patches, dtype=torch.bool, device=device)
    selected[chosen] = True
    key = torch.where(selected, positions, positions + num_patches)  # selected first, each group ascending
    return Selection.of_fixed_count(key.argsort().expand(batch, num_patches), len(chosen))


def _center_counts(descending: torch.Tensor, settings: ReductionSettings) -> int | torch.Tensor:
    """How many attention centers each image keeps, from its attention sorted descending [B, N]: a number where
    the settings fix it, else (adaptive) a LongTensor [B] that stays on the device."""
    num_patches = descending.shape[1]
    if settings.adaptive:
        outliers = _outlier_counts_of_sorted(descending.flip(1), settings.iqr_scale)
        return outliers.clamp(min=1, max=num_patches)
    return fixed_center_count(settings, num_patches)


def fixed_center_count(settings: ReductionSettings, num_patches: int) -> int:
    """The attention centers of every image under settings that fix them (adaptive=False): PruMerge's budget
    less the summary token, a quarter of it for PruMerge+ (the rest are spatial samples), or the ratio's."""
    if settings.num_visual_tokens is not None:
        kept = max(1, settings.num_visual_tokens - int(settings.summary_token))
        centers = max(1, math.ceil(kept / 4)) if settings.token_reduction == "prumerge_plus" else kept
    else:
        centers = max(1, int(num_patches * settings.reduction_ratio))
    return min(centers, num_patches)


def _budget_samples(
    is_center: torch.Tensor, num_centers: int, settings: ReductionSettings
) -> tuple[torch.Tensor, int]:
    """PruMerge+ with a fixed budget: the rest spread evenly over the non-center patches, so the count
    is exact. is_center [B, N] -> (sampled [B, N], how many each image samples)."""
    num_patches = is_center.shape[1]
    positions = torch.arange(num_patches, device=is_center.device)
    wanted = min(
        max(0, settings.num_visual_tokens - int(settings.summary_token)) - num_centers,
        num_patches - num_centers,
    )
    free = torch.where(is_center, positions + num_patches, positions).sort(dim=1).values  # non-centers first
    picks = (
        (torch.arange(wanted, device=is_center.device) + 0.5) * (num_patches - num_centers) / max(wanted, 1)
    ).long()
    return torch.zeros_like(is_center).scatter_(1, free[:, picks], True), wanted


def _fixed_ratio_plus_slots(
    order: torch.Tensor, is_center: torch.Tensor, num_centers: int, reduction_ratio: float
) -> Selection:
    """PruMerge+ with a fixed ratio, as its checkpoint was trained: samples s/2, s/2 + s, ... < N - 1
    (s = int(1 / ratio)) are appended without removing those that are already centers; where centers
    and samples together would outnumber the patches (ratios near 1) the samples are cut, so that no
    image gets more tokens than patches.

    The published complement of such a selection leaves out as many of the lowest-index
    unselected patches as there are duplicates; that is reproduced, so every image still has N slots.
    """
    batch, num_patches = order.shape
    device = order.device
    positions = torch.arange(num_patches, device=device)
    step = int(1 / reduction_ratio)
    first = int(step / 2)
    samples = torch.arange(first, max(first, num_patches - 1), max(1, step), device=device)  # [L]
    samples = samples[: num_patches - num_centers]  # never more slots than patches (ratios near 1)
    is_selected = is_center.clone()
    is_selected[:, samples] = True
    duplicates = num_centers + samples.numel() - is_selected.sum(dim=1)  # [B]
    unselected = ~is_selected
    place_among_unselected = unselected.cumsum(dim=1) - 1  # [B, N]
    left_over = unselected & (place_among_unselected >= duplicates[:, None])
    rest = torch.where(left_over, positions, positions + num_patches).argsort(dim=1)
    num_rest = num_patches - num_centers - samples.numel()
    slots = torch.cat([order[:, :num_centers], samples.expand(batch, -1), rest[:, : max(num_rest, 0)]], dim=1)
    return Selection.of_fixed_count(slots, num_centers + samples.numel())


def plan_merge(keys: torch.Tensor, selection: Selection, merge_k: int) -> torch.Tensor:
    """TS: for every selected slot, the `merge_k` other slots whose keys are most cosine-similar.

    keys [B, N, Dk] and the selection -> the absorbed patch indices [B, M, k] with M = the selection's
    width (max(num_selected)), most similar first; rows past an image's own count are padding.
    Within a row the ranking of cos(k_c, k_j) = k_c.k_j / (|k_c| |k_j|) does not depend on |k_c|,
    so only the candidates' norms are divided out. Half-precision keys are ranked in float32, where
    near-ties do not collapse into ties whose order depends on the hardware.
    """
    slots = selection.slots
    batch, num_slots = slots.shape
    width = selection.width
    k = min(merge_k, num_slots - 1)
    with torch.no_grad():
        keys = keys.to(torch.promote_types(keys.dtype, torch.float32))
        norms = torch.linalg.vector_norm(keys, dim=-1)  # [B, N]
        _check_finite("keys", norms)
        image = torch.arange(batch, device=slots.device)[:, None]  # [B, 1]
        selected_keys = keys[image, slots[:, :width]]  # [B, M, Dk]
        by_patch = torch.bmm(selected_keys, keys.transpose(1, 2))  # [B, M, N]
        by_patch.mul_(norms.clamp_min(1e-12).reciprocal()[:, None, :])  # cosine times |k_c|
        similarity = by_patch.gather(2, slots[:, None, :].expand(-1, width, -1))  # [B, M, S]
        similarity.diagonal(dim1=1, dim2=2).fill_(-torch.inf)  # a token never absorbs itself
        nearest = similarity.topk(k, dim=-1).indices  # [B, M, k] slot positions
        return slots.gather(1, nearest.flatten(1)).view(batch, width, k)


def apply_merge(
    features: torch.Tensor,
    attention: torch.Tensor,
    selection: Selection,
    neighbors: torch.Tensor | None,
    merge_weighting: str,
    summary_token: bool,
) -> torch.Tensor:
    """Build the output tokens [B, M (+1), C] (M = the selection's width): one per selected slot (rows past an
    image's count are padding), then the summary token (dropped by `_per_image` for an image whose patches
    are all selected: nothing is left to summarize).

    "reference": x_c + sum_j a_j x_j over the absorbed patches (not normalized, as published);
    "mean": the attention-weighted mean of the center and its absorbed patches.
    The summary token is sum_j a_j x_j over all unselected slots.
    Every token is a weighted bag of patch rows, so one `embedding_bag` over the flattened batch
    makes all of them, without a [B, M, k, C] intermediate. Half-precision features are summed in
    float32 and rounded once, as the published code's `torch.sum` did.
    """
    batch, num_patches, channels = features.shape
    slots, num_selected, width = selection.slots, selection.num_selected, selection.width
    device = slots.device
    output_dtype = features.dtype
    features = features.to(torch.promote_types(output_dtype, torch.float32))
    weights = attention.to(features.dtype)  # [B, N]
    selected = slots[:, :width, None]  # [B, M, 1]
    members = selected if neighbors is None else torch.cat([selected, neighbors], dim=-1)  # [B, M, 1+k]
    bag_size = members.shape[-1]
    member_weights = weights.gather(1, members.flatten(1)).view(members.shape)  # [B, M, 1+k]
    if merge_weighting == "mean" and bag_size > 1:
        member_weights = member_weights / member_weights.sum(dim=-1, keepdim=True)
    else:
        center_weight = torch.ones_like(member_weights[..., :1])  # x_c counted once, unweighted
        member_weights = torch.cat([center_weight, member_weights[..., 1:]], dim=-1)

    bags, bag_weights = members.flatten(1), member_weights.flatten(1)  # [B, M*(1+k)]
    bag_starts = torch.arange(0, width * bag_size, bag_size, device=device)  # [M]
    if summary_token:
        in_summary = torch.arange(slots.shape[1], device=device) >= num_selected[:, None]  # [B, S]
        bags = torch.cat([bags, slots], dim=1)
        bag_weights = torch.cat([bag_weights, weights.gather(1, slots) * in_summary], dim=1)
        bag_starts = torch.cat([bag_starts, bag_starts.new_full((1,), width * bag_size)])  # [M+1]
    image = torch.arange(batch, device=device)[:, None]  # [B, 1]
    tokens = F.embedding_bag(
        (bags + image * num_patches).flatten(),  # rows of the [B*N, C] feature table
        features.reshape(batch * num_patches, channels),
        (bag_starts + image * bags.shape[1]).flatten(),
        mode="sum",
        per_sample_weights=bag_weights.flatten(),
    ).view(batch, -1, channels)  # [B, M (+1), C]; padding rows are sums of real patches, dropped below
    tokens = tokens.to(output_dtype)
    # Checked here, where every patch that matters has arrived: one pass over B*M*C, not B*N*C,
    # with the padding rows (which may read patches no real token reads) left out.
    padding = torch.arange(tokens.shape[1], device=device) >= num_selected[:, None]  # [B, M (+1)]
    if summary_token:
        padding[:, -1] = False
    _check_finite("features", tokens.masked_fill(padding[..., None], 0))
    return tokens


def keep_all_tokens(features: torch.Tensor) -> ReducedTokens:
    """No reduction: every patch of [B, N, C] features is a token."""
    batch, num_patches, _ = features.shape
    every_patch = torch.arange(num_patches, device=features.device)
    no_neighbors = every_patch.new_empty(num_patches, 0)
    return ReducedTokens(list(features.unbind(0)), [every_patch] * batch, [no_neighbors] * batch)


def reduce_visual_tokens(
    features: torch.Tensor,
    attention: torch.Tensor,
    keys: torch.Tensor,
    settings: ReductionSettings | None = None,
    **fields,
) -> ReducedTokens:
    """Reduce patch features [B, N, C] to a per-image set of tokens.

    attention [B, N] is the [CLS]-to-patch attention (see `class_attention`), keys [B, N, Dk] the
    patch keys of the same layer (no [CLS] row). `settings` (default: the published PruMerge) may
    be adjusted by keyword, e.g. `token_reduction="prumerge_plus"`; `class_attention` and
    `reduction_layer` (and `importance`) choose the attention and keys, so they are not keywords here.
    "none" keeps every patch; "sequential" and "spatial" (the paper's ablation baselines) keep
    `num_visual_tokens` patches (or N * reduction_ratio), the first ones or a uniform grid,
    without merging or a summary token.
    A NaN or inf raises a NonFiniteError naming the input when it is in `attention`, in `keys` while
    merging, or in a feature row that reaches an output token (with the summary token on, every
    row does). Rows that no token reads are not checked: the check costs a pass over the output,
    not over [B, N, C].
    """
    encoder_fields = sorted({"class_attention", "importance", "reduction_layer"} & set(fields))
    if encoder_fields:
        raise ReductionSettingsError(
            f"{encoder_fields} choose the attention and keys passed in, not how they are reduced; "
            "compute them with patch_importance(queries, keys, score, mode) from the layer you want"
        )
    settings = (settings or ReductionSettings()).replace(**fields)
    _check_shapes(features, attention, keys)
    _check_finite("attention", attention)
    batch, num_patches, _ = features.shape
    if batch == 0:
        return ReducedTokens([], [], [])
    if num_patches == 0:
        raise VisualInputError("features have no patches ([batch, 0, channels]); nothing to reduce")
    if not features.is_floating_point():
        raise VisualInputError(
            f"features must be floating point, got {features.dtype}: tokens are weighted sums of patch rows"
        )
    if not settings.reduces:
        _check_finite("features", features)
        return keep_all_tokens(features)

    budget = settings.num_visual_tokens
    if (
        settings.prunes
        and not settings.adaptive
        and budget is not None
        and budget < 1 + settings.summary_token
    ):
        raise ReductionSettingsError(
            f"num_visual_tokens={budget} leaves no room for an attention center"
            + (
                " beside the summary token; use at least 2 or summary_token=False"
                if settings.summary_token
                else ""
            )
        )
    summary_token = settings.summary_token and settings.prunes
    selection = select_tokens(attention, settings.replace(summary_token=summary_token))
    merging = settings.prunes and settings.merge
    neighbors = plan_merge(keys, selection, settings.merge_k) if merging else None  # [B, M, k]
    tokens = apply_merge(features, attention, selection, neighbors, settings.merge_weighting, summary_token)
    # an adaptive selection on an accelerator: its one host read, with the finite checks queued by then
    counts = selection.counts if selection.counts is not None else read_back(selection.num_selected)
    return _per_image(tokens, selection, counts, neighbors, settings.token_order, summary_token)


def _per_image(
    tokens, selection: Selection, counts: list[int], neighbors, token_order: str, summary_token: bool
) -> ReducedTokens:
    """Each image's tokens (its selected rows, then its summary token if it has one), kept patches and absorbed
    patches, in attention or raster order."""
    out_features, out_centers, out_neighbors = [], [], []
    slots, width = selection.slots, selection.width
    num_patches = slots.shape[1]
    for image, count in enumerate(counts):
        centers = slots[image, :count]
        absorbed = neighbors[image, :count] if neighbors is not None else centers.new_empty(count, 0)
        has_summary = summary_token and count < num_patches
        if count == width:  # the widest image (every image, for a fixed count): a view, no copy
            image_tokens = tokens[image, : count + has_summary]
        else:
            image_tokens = torch.cat([tokens[image, :count], tokens[image, width : width + has_summary]])
        if token_order == "spatial":
            raster = centers.argsort(stable=True)
            centers, absorbed = centers[raster], absorbed[raster]
            image_tokens = torch.cat([image_tokens[:count][raster], image_tokens[count:]])
        out_features.append(image_tokens)
        out_centers.append(centers)
        out_neighbors.append(absorbed)
    return ReducedTokens(out_features, out_centers, out_neighbors)
