# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""The vision tower's part of PruMerge, for CLIP- and SigLIP-style towers: patch features plus importance and keys.

A LLaVA-family model reads the hidden state of one (or a few) encoder layers, -2 by default, so the
layers after the deepest one it reads never need to run; PruMerge needs only the q/k projections of
its reduction layer (the last by default), not that layer's attention output or MLP. `encode_patches`
runs exactly that much. It serves an image tower, a video tower (frames as a batch) and the views
of an AnyRes image alike.

A CLIP-style tower has `embeddings` (with a [CLS] `class_embedding`), `pre_layrnorm` and
`encoder.layers`, each layer with `layer_norm1` and `self_attn.q_proj` / `k_proj` (transformers 4.x
wraps it in `vision_model`); a SigLIP tower has the same layers, no [CLS] token and no pre-norm, so
its patches are scored by a stand-in for the [CLS] row (`ReductionSettings.importance`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ReductionSettingsError, VisualInputError
from .reduction_settings import ReductionSettings
from .runtime_compat import encoder_layer_mask_kwargs
from .token_reduction import (
    ReducedTokens,
    keep_all_tokens,
    patch_importance,
    raise_if_not_finite,
    reduce_visual_tokens,
)


@dataclass
class EncodedPatches:
    """What the vision tower hands the reducer, for n images (or frames, or views) of N patches each."""

    features: torch.Tensor  # [n, N, C] the selected hidden state(s), patch rows only
    class_features: torch.Tensor | None = None  # [n, 1, C] the [CLS] rows, when the strategy keeps them
    attention: torch.Tensor | None = None  # [n, N] each patch's importance; None without reduction
    keys: torch.Tensor | None = None  # [n, N, Dk] patch keys of the reduction layer

    def select(self, indices: torch.Tensor) -> EncodedPatches:
        """The same for a subset of the images (frames, views), by index."""

        def pick(tensor):
            return None if tensor is None else tensor[indices]

        return EncodedPatches(
            pick(self.features), pick(self.class_features), pick(self.attention), pick(self.keys)
        )

    def subset(self, item: int, patches: torch.Tensor) -> EncodedPatches:
        """One image (frame, view) restricted to some of its patches (an AnyRes crop without its padding)."""

        def pick(tensor):
            return None if tensor is None else tensor[item][patches][None]

        class_features = None if self.class_features is None else self.class_features[item][None]
        return EncodedPatches(pick(self.features), class_features, pick(self.attention), pick(self.keys))

    def reduce(self, settings: ReductionSettings) -> ReducedTokens:
        """The reducer on these patches; a kept [CLS] row comes first in every image's tokens."""
        if self.attention is None or not settings.reduces:
            reduced = keep_all_tokens(self.features)
        else:
            reduced = reduce_visual_tokens(self.features, self.attention, self.keys, settings)
        if self.class_features is not None:
            reduced.features = [
                torch.cat([cls, tokens])
                for cls, tokens in zip(self.class_features, reduced.features, strict=True)
            ]
        return reduced


def clip_transformer(tower: nn.Module) -> nn.Module:
    """The transformer inside a CLIP- or SigLIP-style tower (4.x wraps it in `vision_model`); refuses others."""
    transformer = getattr(tower, "vision_model", tower)
    if not all(hasattr(transformer, name) for name in ("embeddings", "encoder")) or not hasattr(
        transformer.encoder, "layers"
    ):
        raise VisualInputError(
            f"PruMerge needs a CLIP- or SigLIP-style vision tower (embeddings, encoder.layers); got "
            f"{type(tower).__name__}. Use token_reduction='none' for other towers."
        )
    return transformer


def has_class_token(tower: nn.Module) -> bool:
    """Whether the tower's sequence starts with a [CLS] token (CLIP's does; SigLIP's holds patches only)."""
    return hasattr(clip_transformer(tower).embeddings, "class_embedding")


def described_shape(value) -> tuple | str:
    """How an input that should be a tensor shows in an error message: its shape, else its type."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def check_pixel_values(pixel_values: torch.Tensor, vision_config, name: str = "pixel_values") -> None:
    """[n, channels, size, size] finite values, as the tower's image processor makes them."""
    expected = (vision_config.num_channels, vision_config.image_size, vision_config.image_size)
    if (
        not isinstance(pixel_values, torch.Tensor)
        or pixel_values.dim() != 4
        or tuple(pixel_values.shape[1:]) != expected
    ):
        raise VisualInputError(
            f"{name} must be [num_images, {expected[0]}, {expected[1]}, {expected[2]}] for this vision tower, "
            f"got {described_shape(pixel_values)}; preprocess images with the model's image processor"
        )
    raise_if_not_finite(pixel_values, f"{name} contain NaN or inf; check the image loading and preprocessing")


@contextlib.contextmanager
def weights_in_place(modules):
    """Run code that calls submodules directly as if each module's own forward were running.

    accelerate's device-map hooks sit on whole modules and load offloaded weights only in their
    `pre_forward`; the encoder below calls inside such modules (to skip work nobody uses).
    """
    entered = []
    try:
        for module in modules:
            hook = getattr(module, "_hf_hook", None)
            if hook is not None:
                hook.pre_forward(module)
                entered.append((module, hook))
        yield
    finally:
        for module, hook in reversed(entered):
            hook.post_forward(module, None)


def to_device_of(tensor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Move `tensor` to where `weight` lives, unless it is offloaded (meta): its module's hook moves inputs then."""
    return tensor if weight.device.type == "meta" else tensor.to(weight.device)


def _layer_indices(num_layers: int, feature_layers: int | list[int], settings: ReductionSettings):
    """Indices into the hidden states (0: embeddings, i: the input of layer i) of the feature layer(s), and the
    index of the reduction layer."""
    requested = [feature_layers] if isinstance(feature_layers, int) else list(feature_layers)
    outside = [i for i in requested if not -(num_layers + 1) <= i <= num_layers]
    if outside:
        raise VisualInputError(
            f"vision_feature_layer {outside} is outside the vision tower's hidden states: use an index in "
            f"[{-(num_layers + 1)}, {num_layers}] (0 the embeddings, -1 the last layer's output)"
        )
    if not -num_layers <= settings.reduction_layer < num_layers:
        raise ReductionSettingsError(
            f"reduction_layer={settings.reduction_layer} is outside the vision tower's {num_layers} layers; "
            f"use an index in [{-num_layers}, {num_layers - 1}]"
        )
    return [i % (num_layers + 1) for i in requested], settings.reduction_layer % num_layers


def encode_patches(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    feature_layers: int | list[int],
    keep_class_token: bool,
    settings: ReductionSettings,
) -> EncodedPatches:
    """Patch features of `pixel_values` [n, 3, H, W] and, when `settings` reduce, [CLS] attention and keys.

    feature_layers: the hidden state(s) the model reads (index into the tower's hidden states, as
    `vision_feature_layer`: -2 is the input of the last layer); several are concatenated on channels.
    keep_class_token: LLaVA's "full" strategy: the [CLS] row is read too (a tower without one: every row is a
        patch; "default" drops the first row, as stock does).
    Only the layers up to the deepest one needed run.
    """
    transformer = clip_transformer(tower)
    layers = transformer.encoder.layers
    feature_indices, reduction_index = _layer_indices(len(layers), feature_layers, settings)
    # hidden_states[i] is the input of layer i; nothing past the deepest needed one is computed.
    deepest = max(feature_indices + ([reduction_index] if settings.reduces else []))
    with weights_in_place([tower, transformer, transformer.encoder]):
        pixel_values = to_device_of(pixel_values, transformer.embeddings.patch_embedding.weight)
        hidden = transformer.embeddings(pixel_values)  # [n, 1+N, D] ([CLS] first), or [n, N, D] without one
        if hasattr(transformer, "pre_layrnorm"):  # CLIP's; SigLIP has none
            hidden = transformer.pre_layrnorm(hidden)
        hidden_states = [hidden]
        masks = encoder_layer_mask_kwargs(layers[0])
        for layer in layers[:deepest]:
            output = layer(hidden, **masks)
            hidden = output[0] if isinstance(output, tuple) else output
            hidden_states.append(hidden)
    return patches_from_hidden_states(tower, hidden_states, feature_layers, keep_class_token, settings)


def patches_from_hidden_states(
    tower: nn.Module,
    hidden_states,
    feature_layers: int | list[int],
    keep_class_token: bool,
    settings: ReductionSettings,
) -> EncodedPatches:
    """`encode_patches` from hidden states already computed (those of the partial run, or all of a full
    `output_hidden_states=True` run): the feature layer(s), and the reduction layer's q/k on its input."""
    layers = clip_transformer(tower).encoder.layers
    feature_indices, reduction_index = _layer_indices(len(layers), feature_layers, settings)
    selected = torch.cat([hidden_states[i] for i in feature_indices], dim=-1)  # [n, (1+)N, C]
    class_token = has_class_token(tower)
    # the [CLS] row is never a patch; stock's "default" strategy drops the first row whatever it holds
    patches = slice(1, None) if class_token or not keep_class_token else slice(None)
    encoded = EncodedPatches(
        selected[:, patches], selected[:, :1] if keep_class_token and class_token else None
    )
    if not settings.reduces:
        return encoded
    layer = layers[reduction_index]
    with weights_in_place([layer]):
        normed = layer.layer_norm1(to_device_of(hidden_states[reduction_index], layer.layer_norm1.weight))
        queries = layer.self_attn.q_proj(normed)  # [n, (1+)N, D]
        keys = layer.self_attn.k_proj(normed)  # [n, (1+)N, D]
    num_heads = getattr(layer.self_attn, "num_heads", None)
    scored = slice(None) if class_token else patches  # the [CLS] row scores its patches
    importance = patch_importance(
        queries[:, scored],
        keys[:, scored],
        settings.importance,
        settings.class_attention,
        num_heads,
        class_token,
    )  # [n, N]
    encoded.attention = importance.to(encoded.features.device)
    encoded.keys = keys[:, patches].to(encoded.features.device)
    return encoded
