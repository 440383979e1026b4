"""How many tokens each image reaches the language model with, when that number is the same for every image.

A serving engine such as vLLM reserves each image's placeholder run (and its KV-cache blocks) when a
request arrives, before the vision tower runs, while PruMerge's adaptive count is known only after.
A fixed budget (`adaptive=False`), the baselines and "none" keep the same count for any image; that
count is read from the reducer itself, run once on a constant input, so it cannot drift from what
the reducer does with real images. Imports torch only (export uses it too).
"""

from __future__ import annotations

import functools

import torch

from ..errors import UnservableBudgetError
from ..modeling.reduction_settings import ReductionSettings
from ..modeling.vision_encoding import EncodedPatches

# PruMerge+ budgets of 576 patches (11%, 22%, 33%) at which token-reduction methods are usually compared.
COMPARED_BUDGETS = (64, 128, 192)


def image_token_count(config) -> int:
    """Tokens per image that a PruMerge `config` sends to the language model.

    LLaVA-1.5: the reducer's count for its one view. AnyRes (LLaVA-NeXT, LLaVA-OneVision): `num_visual_tokens`,
    which the views share (newlines included). Native resolution (Qwen-VL): that of every image with more
    merged tokens than `num_visual_tokens`; one with exactly that many keeps them all (smaller ones are
    refused by the model).

    Raises UnservableBudgetError when the count depends on the image (PruMerge or PruMerge+ with
    adaptive=True; for AnyRes and native resolution, also a share of the image or none); the message says
    which fixed budgets to use instead.
    """
    settings = config.reduction_settings
    check_fixed_budget(settings)
    vision = config.vision_config
    kind = _image_size_dependence(config)
    if kind is not None:
        if not settings.reduces or settings.num_visual_tokens is None:
            raise UnservableBudgetError(
                f"token_reduction={settings.token_reduction!r} without num_visual_tokens keeps a number of tokens "
                f"that follows each image's size ({kind}); a fixed count needs num_visual_tokens: export with "
                "`--no-adaptive --num-visual-tokens 64`"
            )
        if kind.startswith("AnyRes"):
            return settings.num_visual_tokens
        return _reduced_count(settings, settings.num_visual_tokens + 1, keep_class_token=False)
    num_patches = (vision.image_size // vision.patch_size) ** 2
    return _reduced_count(settings, num_patches, config.vision_feature_select_strategy == "full")


def video_token_count(config) -> int:
    """Tokens per video that a PruMerge `config` sends to the language model: `num_video_tokens`, which the
    frames (Qwen-VL: frame groups) share, the video's newline included (LLaVA-OneVision). Raises
    UnservableBudgetError for any other settings, whose count follows the video's length."""
    settings = config.reduction_settings
    check_fixed_budget(settings)
    if not settings.reduces or settings.num_video_tokens is None:
        raise UnservableBudgetError(
            f"token_reduction={settings.token_reduction!r} without num_video_tokens keeps a number of tokens "
            "that follows each video's length; a fixed count per video needs num_video_tokens: export with "
            "`--no-adaptive --num-visual-tokens 64 --num-video-tokens 256`, or serve images alone "
            """(`--limit-mm-per-prompt '{"video": 0}'`)"""
        )
    return settings.num_video_tokens


def takes_videos(config) -> bool:
    """Whether the architecture of `config` reads videos (LLaVA-OneVision, Qwen-VL)."""
    return any(getattr(config, name, None) is not None for name in ("video_token_id", "video_token_index"))


def served_budgets(config, videos: bool) -> dict[str, int | None]:
    """Per modality served (images, and videos where `videos`), its fixed token count per item, or None for
    stock's count (`token_reduction="none"`: every token, counted as vLLM's own model counts them); settings
    whose count varies with PruMerge's choices are refused (see `image_token_count`, `video_token_count`)."""
    modalities = ["image", "video"] if videos and takes_videos(config) else ["image"]
    if not config.reduction_settings.reduces:
        return dict.fromkeys(modalities)
    counts = {"image": image_token_count, "video": video_token_count}
    return {modality: counts[modality](config) for modality in modalities}


def _image_size_dependence(config) -> str | None:
    """Why an image's unreduced token count follows its size, or None where it does not (one fixed view)."""
    if getattr(config, "image_grid_pinpoints", None) is not None:
        return "AnyRes: a base view and a grid of crops chosen by the image's size"
    if getattr(config.vision_config, "image_size", None) is None:
        return "native resolution: Qwen-VL's merged tokens"
    return None


def check_fixed_budget(settings: ReductionSettings) -> None:
    """Refuse settings whose token count varies per image, naming the fixed budgets to use."""
    if not settings.counts_fixed:
        budgets = ", ".join(map(str, COMPARED_BUDGETS))
        raise UnservableBudgetError(
            f"token_reduction={settings.token_reduction!r} with adaptive=True keeps a different number of tokens "
            "for each image (its [CLS]-attention outliers), but vLLM reserves each image's placeholder tokens "
            "before the vision tower runs, so it can serve only a fixed budget. Use adaptive=False with "
            f"num_visual_tokens: {budgets} for PruMerge+ (the budgets it is usually compared at), or about 32 "
            "for PruMerge (its average adaptive count). Export with `--no-adaptive --num-visual-tokens 64`, or "
            "override the config in vLLM: hf_overrides={'adaptive': False, 'num_visual_tokens': 64} "
            "(`--hf-overrides` on the command line)."
        )


@functools.cache
def _reduced_count(settings: ReductionSettings, num_patches: int, keep_class_token: bool) -> int:
    """The reducer's token count for one constant image of `num_patches` patches (any image gives the same)."""
    encoded = EncodedPatches(
        features=torch.zeros(1, num_patches, 1),  # [1, N, C=1]
        class_features=torch.zeros(1, 1, 1) if keep_class_token else None,  # [1, 1, 1]
        attention=torch.full((1, num_patches), 1 / num_patches),  # [1, N]
        keys=torch.ones(1, num_patches, 1),  # [1, N, Dk=1]
    )
    return encoded.reduce(settings).num_tokens[0]
