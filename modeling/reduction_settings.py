# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""The PruMerge reducer's settings: one frozen, validated dataclass whose defaults are the published reducer.

Configs build it from their fields, the reducer and the partial vision encoder read it, and tools
that try another method for one call (bench, demo, visualize) pass a modified copy instead of
changing a model's config. Standard library only: the command line imports it without torch, and
it travels inside Hub folders as remote code.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

from .errors import ReductionSettingsError

TOKEN_REDUCTION_METHODS = ("prumerge", "prumerge_plus", "none", "spatial", "sequential")
PRUNING_METHODS = ("prumerge", "prumerge_plus")  # attention-selected tokens, merging, summary token
MERGE_WEIGHTINGS = ("reference", "mean")
CLASS_ATTENTION_MODES = ("reference", "heads_mean")
# Where each patch's importance comes from: "cls" the [CLS] row of the reduction layer's attention (the
# published score); for towers without a [CLS] token (SigLIP), "mean_attention" the mean attention each
# patch receives and "mean_query" that of one synthetic query, the patches' mean; "auto" the [CLS] row
# where the tower has one, else `STAND_IN_IMPORTANCE`: "mean_attention", which on the mini model trained
# here without a [CLS] token kept patches on objects 77% of the time against mean_query's 66% (README).
IMPORTANCE_SCORES = ("auto", "cls", "mean_query", "mean_attention")
STAND_IN_IMPORTANCE = "mean_attention"
TOKEN_ORDERS = ("attention", "spatial")

_CHOICES = {
    "token_reduction": TOKEN_REDUCTION_METHODS,
    "merge_weighting": MERGE_WEIGHTINGS,
    "class_attention": CLASS_ATTENTION_MODES,
    "importance": IMPORTANCE_SCORES,
    "token_order": TOKEN_ORDERS,
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ReductionSettings:
    """How the visual tokens of one image are reduced. Defaults reproduce the published PruMerge.

    token_reduction: "prumerge", "prumerge_plus", "none" (every patch, as stock LLaVA), or the
        paper's ablation baselines "sequential" (the first n patches) and "spatial" (a uniform grid).
    adaptive: keep the per-image IQR outliers of the [CLS] attention; False uses `reduction_ratio`
        or `num_visual_tokens`.
    reduction_ratio: the kept fraction when not adaptive.
    num_visual_tokens: with adaptive=False, the exact number of tokens per image (per video frame,
        the frame's [CLS] token included), summary token included; the count for the baselines.
    num_video_tokens: with adaptive=False, the exact number of tokens per video, split evenly over its
        frames (each frame's [CLS] token included); overrides num_visual_tokens for videos.
    iqr_scale: outliers lie above Q3 + iqr_scale * (Q3 - Q1).
    merge: token supplement (TS); False keeps the selected patches as they are (AITS only).
    merge_k: patches each kept token absorbs.
    merge_weighting: "reference" (x_c + sum_j a_j x_j, as published) or "mean" (the
        attention-weighted mean, as the paper's text describes).
    summary_token: append the attention-weighted sum of every patch not kept.
    class_attention: "reference" (one head over the full width, as published) or "heads_mean"
        (the layer's true per-head attention, averaged); applies to every importance score.
    importance: where each patch's importance comes from: "cls" (the [CLS] row, published), "mean_query"
        (softmax(mean(q) K^T / sqrt(d)): one synthetic query), "mean_attention" (the mean attention each
        patch receives from the patches), or "auto" ("cls" where the tower has a [CLS] token, else
        "mean_attention", measured). The stand-ins read patches only, on any tower.
    reduction_layer: the vision layer whose q/k projections give the [CLS] attention and the keys.
    token_order: "attention" (descending attention, then spatial samples: published) or "spatial"
        (raster order of the kept patches).
    """

    token_reduction: str = "prumerge"
    adaptive: bool = True
    reduction_ratio: float = 1 / 8
    num_visual_tokens: int | None = None
    num_video_tokens: int | None = None
    iqr_scale: float = 1.5
    merge: bool = True
    merge_k: int = 32
    merge_weighting: str = "reference"
    summary_token: bool = True
    class_attention: str = "reference"
    importance: str = "auto"
    reduction_layer: int = -1
    token_order: str = "attention"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ReductionSettingsError(
                    f"{name}={getattr(self, name)!r} is not supported; choose one of {list(choices)}"
                )
        for name in ("adaptive", "merge", "summary_token"):
            if not isinstance(getattr(self, name), bool):
                raise ReductionSettingsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _is_number(self.reduction_ratio) or not 0 < self.reduction_ratio <= 1:
            raise ReductionSettingsError(
                f"reduction_ratio must be a number in (0, 1], got {self.reduction_ratio!r}"
            )
        for name in ("num_visual_tokens", "num_video_tokens"):
            count = getattr(self, name)
            if count is not None and (not _is_integer(count) or count < 1):
                raise ReductionSettingsError(f"{name} must be a positive integer or None, got {count!r}")
        if not _is_number(self.iqr_scale) or not math.isfinite(self.iqr_scale) or self.iqr_scale < 0:
            raise ReductionSettingsError(f"iqr_scale must be a finite number >= 0, got {self.iqr_scale!r}")
        if not _is_integer(self.merge_k) or self.merge_k < 0:
            raise ReductionSettingsError(f"merge_k must be an integer >= 0, got {self.merge_k!r}")
        if not _is_integer(self.reduction_layer):
            raise ReductionSettingsError(
                f"reduction_layer must be an integer layer index (e.g. -1), got {self.reduction_layer!r}"
            )
        ignored = self.ignored_fields()
        if ignored:
            warnings.warn(
                f"{', '.join(ignored)} {'takes' if len(ignored) == 1 else 'take'} no effect with "
                f"token_reduction={self.token_reduction!r} and adaptive=True: "
                "each image keeps its IQR outliers (the adaptive count wins); pass adaptive=False for a fixed "
                "budget",
                UserWarning,
                stacklevel=3,
            )

    def ignored_fields(self) -> list[str]:
        """The fixed-count fields set to something that cannot take effect: PruMerge's adaptive count wins over
        `num_visual_tokens`, `num_video_tokens` and a changed `reduction_ratio`."""
        if not (self.prunes and self.adaptive):
            return []
        ignored = [f"{name}={getattr(self, name)}" for name in ("num_visual_tokens", "num_video_tokens")
                   if getattr(self, name) is not None]  # fmt: skip
        if self.reduction_ratio != ReductionSettings.reduction_ratio:
            ignored.append(f"reduction_ratio={self.reduction_ratio:g}")
        return ignored

    @classmethod
    def from_fields(cls, fields: dict) -> ReductionSettings:
        """Settings from a mapping that may hold other keys too (a config's attributes): only ours are read."""
        return cls(**{name: fields[name] for name in REDUCTION_FIELDS if name in fields})

    def replace(self, **changes) -> ReductionSettings:
        """A copy with some fields changed (validated); unknown names are an error."""
        unknown = sorted(set(changes) - set(REDUCTION_FIELDS))
        if unknown:
            raise ReductionSettingsError(
                f"Unknown token-reduction field(s) {unknown}; known fields: {list(REDUCTION_FIELDS)}"
            )
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def reduces(self) -> bool:
        """Whether any patch is dropped or merged (everything but "none")."""
        return self.token_reduction != "none"

    @property
    def counts_fixed(self) -> bool:
        """Whether the settings fix how many tokens every image keeps (a budget, a ratio, a baseline, or no
        reduction), known before the vision tower runs; False for PruMerge(+)'s adaptive IQR counts."""
        return not (self.prunes and self.adaptive)

    @property
    def prunes(self) -> bool:
        """Whether tokens are chosen by [CLS] attention, merged and summarized (PruMerge and PruMerge+)."""
        return self.token_reduction in PRUNING_METHODS


REDUCTION_FIELDS = tuple(field.name for field in dataclasses.fields(ReductionSettings))
# The published reducer's settings, by field name (kept for callers of the 0.1 API).
REDUCTION_DEFAULTS = ReductionSettings().to_dict()


def resolved_importance(score: str, class_token: bool) -> str:
    """The score `importance` names on a tower with or without a [CLS] token ("auto" resolved)."""
    if score == "auto":
        return "cls" if class_token else STAND_IN_IMPORTANCE
    return score


__all__ = [
    "CLASS_ATTENTION_MODES",
    "IMPORTANCE_SCORES",
    "MERGE_WEIGHTINGS",
    "PRUNING_METHODS",
    "REDUCTION_DEFAULTS",
    "REDUCTION_FIELDS",
    "STAND_IN_IMPORTANCE",
    "resolved_importance",
    "TOKEN_ORDERS",
    "TOKEN_REDUCTION_METHODS",
    "ReductionSettings",
]
