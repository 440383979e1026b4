"""LLaVA whose language model sees only the PruMerge-reduced visual tokens.

The stock processor expands every `<image>` into `image_seq_length` (576) placeholders; PruMerge
keeps a different number of tokens per image, known only once the vision tower has run. Before
the LLM runs, each sample's prompt is therefore *compacted*: its image placeholder runs are
replaced by that image's reduced tokens, padding is removed, and the batch is re-padded. The LLM
gets a genuinely shorter sequence (fewer FLOPs, a smaller KV cache), not masked placeholders.

Modifications to the stock classes, each overriding one method:
- `get_image_features` returns the projected reduced tokens, one [n_i, hidden] tensor per image.
- `forward` compacts the prompt when `pixel_values` are given; its outputs report the compacted
  attention mask and, per image, the visual-token count and the kept patches.
- `generate` compacts the prompt once, then decodes from its embeddings; the returned sequences
  start with the compacted prompt, so `batch_decode` and the pipelines strip it as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import __version__ as transformers_version
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
    LlavaPreTrainedModel,
)

from .configuration_llava_prumerge import LlavaPruMergeConfig
from .token_reduction import ReducedTokens, class_attention, keep_all_tokens, reduce_visual_tokens

# transformers 5 returns a ModelOutput from `get_image_features` (the per-image list in `pooler_output`).
_IMAGE_FEATURES_AS_OUTPUT = int(transformers_version.split(".")[0]) >= 5
# transformers 5.24 renamed the KV cache argument `past_key_values` to `cache`, and moved the image
# features of the outputs from `image_hidden_states` to `image_outputs.pooler_output`; both are read
# off the installed classes, so that one Hub folder runs on every release.
CACHE_ARGUMENT = (
    "cache"
    if "cache" in inspect.signature(LlavaForConditionalGeneration.forward).parameters
    else "past_key_values"
)
_IMAGE_OUTPUTS_FIELD = "image_outputs" in {
    field.name for field in dataclasses.fields(LlavaCausalLMOutputWithPast)
}


def _share_llava_checkpoint_layout() -> None:
    """Map weight names as for stock LLaVA (transformers 5 keys its mappings by model type; 4.x uses the
    inherited `_checkpoint_conversion_mapping`), so llava-hf checkpoints load unchanged. Note that a plain
    `save_pretrained` under 5.x drops the CLIP `vision_model.` prefix, which 4.57 cannot read: Hub folders
    are written by `llava-prumerge export`, which writes the llava-hf layout both majors read."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:
        return
    for ours, stock in (("llava_prumerge", "llava"), ("LlavaPruMergeModel", "LlavaModel")):
        register_checkpoint_conversion_mapping(ours, get_checkpoint_conversion_mapping(stock), overwrite=True)


_share_llava_checkpoint_layout()


@dataclass
class LlavaPruMergeModelOutputWithPast(LlavaModelOutputWithPast):
    r"""
    attention_mask (`torch.LongTensor` of shape `(batch_size, compacted_length)`, *optional*):
        The attention mask of the compacted sequence the language model saw; `last_hidden_state` has this length.
    visual_token_counts (`list[int]`, *optional*): per image, how many visual tokens reached the language model.
    visual_token_centers (`list[torch.LongTensor]`, *optional*): per image, the kept patch indices in token order.
    """

    attention_mask: torch.LongTensor | None = None
    visual_token_counts: list[int] | None = None
    visual_token_centers: list[torch.LongTensor] | None = None


@dataclass
class LlavaPruMergeCausalLMOutputWithPast(LlavaCausalLMOutputWithPast):
    r"""
    attention_mask (`torch.LongTensor` of shape `(batch_size, compacted_length)`, *optional*):
        The attention mask of the compacted sequence the language model saw; `logits` has this length
        (with the default `logits_to_keep=0`): position t predicts the token after compacted position t.
    visual_token_counts (`list[int]`, *optional*): per image, how many visual tokens reached the language model.
    visual_token_centers (`list[torch.LongTensor]`, *optional*): per image, the kept patch indices in token order.
    """

    attention_mask: torch.LongTensor | None = None
    visual_token_counts: list[int] | None = None
    visual_token_centers: list[torch.LongTensor] | None = None


@dataclass
class CompactedInputs:
    """A batch whose image placeholder runs hold each image's reduced tokens, re-padded."""

    input_ids: torch.LongTensor  # [B, L'] image positions hold image_token_id
    inputs_embeds: torch.Tensor  # [B, L', hidden]
    attention_mask: torch.LongTensor  # [B, L']
    position_ids: torch.LongTensor  # [B, L']
    labels: torch.LongTensor | None  # [B, L'], -100 on visual tokens and padding
    image_features: torch.Tensor  # [sum n_i, hidden], the projected visual tokens in prompt order
    visual_token_counts: list[int]
    visual_token_centers: list[torch.LongTensor]


@dataclass
class EncodedPatches:
    """What the vision tower hands the reducer, for a batch of n images with N patches."""

    features: torch.Tensor  # [n, N, C] the selected hidden state(s), [CLS] removed
    attention: torch.Tensor | None = None  # [n, N] [CLS]-to-patch attention; None without reduction
    keys: torch.Tensor | None = None  # [n, N, Dk] patch keys of the reduction layer


@contextlib.contextmanager
def _weights_in_place(modules):
    """Run code that calls submodules directly as if each module's own forward were running.

    accelerate's device-map hooks sit on whole modules and load offloaded weights only in their
    `pre_forward`; the vision path below calls inside such modules (to skip work nobody uses).
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


def _to_device_of(tensor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Move `tensor` to where `weight` lives, unless it is offloaded (meta): its module's hook moves inputs then."""
    return tensor if weight.device.type == "meta" else tensor.to(weight.device)


def _encoder_layer_masks(layer: nn.Module) -> dict:
    """The (empty) mask arguments of a CLIP-style encoder layer, in the installed transformers' convention:
    4.x also takes `causal_attention_mask`. Read once per forward, not per layer (`inspect` is slow)."""
    if "causal_attention_mask" in inspect.signature(layer.forward).parameters:
        return {"attention_mask": None, "causal_attention_mask": None}
    return {"attention_mask": None}


class LlavaPruMergeModel(LlavaModel):
    """[`LlavaModel`] that feeds the language model the PruMerge-reduced visual tokens."""

    config_class = LlavaPruMergeConfig

    def _vision_transformer(self) -> nn.Module:
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)  # 4.x wraps the transformer
        if not all(hasattr(tower, name) for name in ("embeddings", "pre_layrnorm", "encoder")):
            raise ValueError(
                f"PruMerge needs a CLIP-style vision tower (embeddings, pre_layrnorm, encoder.layers); got "
                f"{type(self.vision_tower).__name__}. Use token_reduction='none' for other towers."
            )
        return tower

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        vision = self.config.vision_config
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be [num_images, {expected[0]}, {expected[1]}, {expected[2]}] for this vision tower, "
                f"got {tuple(pixel_values.shape)}; preprocess images with the model's image processor"
            )
        if not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values contain NaN or inf; check the image loading and preprocessing")

    def encode_patches(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> EncodedPatches:
        """The vision tower's part: patch features and, for the reducer, [CLS] attention and keys.

        Runs the encoder layers only up to the deepest one whose output is used (with the default
        layer -2 features, the last layer's attention output and MLP are never computed), and of the
        reduction layer only its q/k projections.
        """
        self._check_pixel_values(pixel_values)
        config = self.config
        feature_layer = config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = (
            config.vision_feature_select_strategy
            if vision_feature_select_strategy is None
            else vision_feature_select_strategy
        )
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
        if strategy == "full" and config.token_reduction != "none":
            raise ValueError(
                f"token_reduction={config.token_reduction!r} reduces patch tokens and needs "
                "vision_feature_select_strategy='default' (the [CLS] token is not a patch)"
            )
        tower = self._vision_transformer()
        layers = tower.encoder.layers
        num_layers = len(layers)
        feature_indices = [
            i % (num_layers + 1)
            for i in ([feature_layer] if isinstance(feature_layer, int) else feature_layer)
        ]
        pruning = config.token_reduction != "none"
        reduction_index = config.reduction_layer % num_layers
        # hidden_states[i] is the input of layer i; nothing past the deepest needed one is computed.
        deepest = max(feature_indices + ([reduction_index] if pruning else []))

        with _weights_in_place([self.vision_tower, tower, tower.encoder]):
            pixel_values = _to_device_of(pixel_values, tower.embeddings.patch_embedding.weight)
            hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))  # [n, 1+N, D]
            hidden_states = [hidden]
            masks = _encoder_layer_masks(layers[0])
            for layer in layers[:deepest]:
                output = layer(hidden, **masks)
                hidden = output[0] if isinstance(output, tuple) else output
                hidden_states.append(hidden)
            selected = [
                hidden_states[i] if strategy == "full" else hidden_states[i][:, 1:] for i in feature_indices
            ]
            features = torch.cat(selected, dim=-1)  # [n, N, C]
            if not pruning:
                return EncodedPatches(features)

            layer = layers[reduction_index]
            with _weights_in_place([layer]):
                normed = layer.layer_norm1(
                    _to_device_of(hidden_states[reduction_index], layer.layer_norm1.weight)
                )
                queries = layer.self_attn.q_proj(normed)  # [n, 1+N, D]
                keys = layer.self_attn.k_proj(normed)  # [n, 1+N, D]
        attention = class_attention(
            queries, keys, config.class_attention, num_heads=config.vision_config.num_attention_heads
        )  # [n, N]
        return EncodedPatches(features, attention.to(features.device), keys[:, 1:].to(features.device))

    def reduce_patches(self, encoded: EncodedPatches) -> ReducedTokens:
        """The reducer's part, with this model's reducer settings."""
        if encoded.attention is None:
            return keep_all_tokens(encoded.features)
        return reduce_visual_tokens(
            encoded.features, encoded.attention, encoded.keys, **self.config.reducer_kwargs
        )

    def reduce_image_tokens(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> ReducedTokens:
        """Vision tower and PruMerge reducer: per image, the reduced tokens before the projector."""
        return self.reduce_patches(
            self.encode_patches(pixel_values, vision_feature_layer, vision_feature_select_strategy)
        )

    def _project(self, reduced: ReducedTokens) -> list[torch.Tensor]:
        projected = self.multi_modal_projector(torch.cat(reduced.features, dim=0))  # [sum n_i, hidden]
        return list(projected.split(reduced.num_tokens, dim=0))

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ):
        """Overridden: the projected reduced tokens, one [n_i, hidden] tensor per image."""
        if kwargs.get("image_sizes") is not None:
            raise ValueError("image_sizes is not supported: LLaVA-1.5 images are square and of one size")
        features = self._project(
            self.reduce_image_tokens(pixel_values, vision_feature_layer, vision_feature_select_strategy)
        )
        return BaseModelOutputWithPooling(pooler_output=features) if _IMAGE_FEATURES_AS_OUTPUT else features

    def _image_runs(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, num_images: int
    ) -> list[list[tuple[int, int]]]:
        """Per sample, the (start, length) of each image's placeholder run, images in prompt order.

        A run of `<image>` tokens is one image, whatever its length (one token, the processor's
        expansion, or an already reduced run); a run of k * image_seq_length tokens that the
        processor expanded for k adjacent images is split into k.
        """
        is_image = (input_ids == self.config.image_token_id) & attention_mask.bool()  # [B, L]
        previous = torch.nn.functional.pad(is_image[:, :-1], (1, 0))
        following = torch.nn.functional.pad(is_image[:, 1:], (0, 1))
        starts, ends = (is_image & ~previous).nonzero().tolist(), (is_image & ~following).nonzero().tolist()
        runs = [[] for _ in range(input_ids.shape[0])]
        for (sample, start), (_, end) in zip(starts, ends, strict=True):
            runs[sample].append((start, end - start + 1))
        lengths = [length for sample_runs in runs for _, length in sample_runs]
        if len(lengths) == num_images:
            return runs
        per_image = self.config.image_seq_length
        if (
            lengths
            and all(length % per_image == 0 for length in lengths)
            and sum(lengths) // per_image == num_images
        ):
            return [
                [
                    (start + i * per_image, per_image)
                    for start, length in sample_runs
                    for i in range(length // per_image)
                ]
                for sample_runs in runs
            ]
        raise ValueError(
            f"The prompts hold {len(lengths)} run(s) of image tokens (lengths {lengths}) but {num_images} image(s) "
            f"were given: each image needs its own `<image>` in the text (one token, or the processor's {per_image}), "
            "and each `<image>` an image."
        )

    def compact_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        padding_side: str | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduced: ReducedTokens | None = None,
    ) -> CompactedInputs:
        """Encode and reduce the images (unless `reduced` already holds them), then build the
        compacted batch the language model sees.

        `padding_side` defaults to the side the input was padded on, and to the right when the
        input had no padding.
        """
        if input_ids is None:
            raise ValueError("pixel_values need input_ids (with `<image>` placeholders), not inputs_embeds")
        if input_ids.shape[0] == 0:
            raise ValueError("Empty batch: input_ids has no samples")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values holds no image; pass pixel_values=None for text-only prompts")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        runs = self._image_runs(input_ids, attention_mask, pixel_values.shape[0])
        if reduced is None:
            reduced = self.reduce_image_tokens(
                pixel_values, vision_feature_layer, vision_feature_select_strategy
            )
        embed_tokens = self.get_input_embeddings()
        image_features = self._project(reduced)
        text_embeds = embed_tokens(input_ids)  # [B, L, hidden]
        image_features = [f.to(text_embeds.device, text_embeds.dtype) for f in image_features]

        if padding_side is None:
            padded_left = bool((attention_mask[:, 0] == 0).any())
            padding_side = "left" if padded_left else "right"
        keep = attention_mask.bool()
        next_image = 0
        rows = []  # per sample: (ids, embeds, labels)
        for sample, sample_runs in enumerate(runs):
            pieces_ids, pieces_embeds, pieces_labels = [], [], []
            cursor = 0
            for start, length in [*sample_runs, (input_ids.shape[1], 0)]:
                text = keep[sample, cursor:start]
                pieces_ids.append(input_ids[sample, cursor:start][text])
                pieces_embeds.append(text_embeds[sample, cursor:start][text])
                if labels is not None:
                    pieces_labels.append(labels[sample, cursor:start][text])
                if length:
                    tokens = image_features[next_image]
                    next_image += 1
                    pieces_ids.append(input_ids.new_full((tokens.shape[0],), self.config.image_token_id))
                    pieces_embeds.append(tokens)
                    if labels is not None:
                        pieces_labels.append(labels.new_full((tokens.shape[0],), -100))
                cursor = start + length
            rows.append(
                (
                    torch.cat(pieces_ids),
                    torch.cat(pieces_embeds),
                    torch.cat(pieces_labels) if labels is not None else None,
                )
            )

        length = max(ids.shape[0] for ids, _, _ in rows)
        pad_token_id = self.config.text_config.pad_token_id
        pad_token_id = 0 if pad_token_id is None else pad_token_id

        def pad(tensor: torch.Tensor, value) -> torch.Tensor:
            missing = length - tensor.shape[0]
            filler = tensor.new_full((missing, *tensor.shape[1:]), value)
            return torch.cat([filler, tensor] if padding_side == "left" else [tensor, filler])

        new_mask = torch.stack([pad(torch.ones_like(ids), 0) for ids, _, _ in rows])
        position_ids = (new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 1)
        return CompactedInputs(
            input_ids=torch.stack([pad(ids, pad_token_id) for ids, _, _ in rows]),
            inputs_embeds=torch.stack([pad(embeds, 0.0) for _, embeds, _ in rows]),
            attention_mask=new_mask,
            position_ids=position_ids,
            labels=torch.stack([pad(lab, -100) for _, _, lab in rows]) if labels is not None else None,
            image_features=torch.cat(image_features, dim=0),
            visual_token_counts=reduced.num_tokens,
            visual_token_centers=reduced.centers,
        )

    def _check_text_only(self, input_ids, cache, kwargs) -> None:
        """Placeholders without images would silently reach the LLM as ordinary tokens."""
        starting = cache is None or cache.get_seq_length() == 0
        precomputed = kwargs.get("mm_encoder_outputs") is not None
        if (
            input_ids is not None
            and starting
            and not precomputed
            and (input_ids == self.config.image_token_id).any()
        ):
            raise ValueError("The prompt holds `<image>` tokens but no pixel_values were given")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ):
        """Overridden: with `pixel_values`, the language model runs on the compacted batch."""
        kwargs[CACHE_ARGUMENT] = cache = _pop_cache(past_key_values, kwargs)
        if pixel_values is None:
            self._check_text_only(input_ids, cache, kwargs)
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
        _check_prefill(inputs_embeds, cache, kwargs)
        compact = self.compact_inputs(
            input_ids,
            pixel_values,
            attention_mask,
            None,
            None,
            vision_feature_layer,
            vision_feature_select_strategy,
        )
        outputs = super().forward(
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            position_ids=compact.position_ids,
            **kwargs,
        )
        return LlavaPruMergeModelOutputWithPast(
            **{**outputs, **_image_features_field(compact)},
            attention_mask=compact.attention_mask,
            visual_token_counts=compact.visual_token_counts,
            visual_token_centers=compact.visual_token_centers,
        )


def _pop_cache(past_key_values, kwargs):
    """The KV cache, under either of its names (`cache` from transformers 5.24, `past_key_values` before)."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the KV cache once: as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def _image_features_field(compact: CompactedInputs) -> dict:
    """The projected visual tokens, in the output field the installed transformers defines."""
    if _IMAGE_OUTPUTS_FIELD:
        per_image = list(compact.image_features.split(compact.visual_token_counts))
        return {"image_outputs": BaseModelOutputWithPooling(pooler_output=per_image)}
    return {"image_hidden_states": compact.image_features}  # [sum n_i, hidden]


def _check_prefill(inputs_embeds, cache, kwargs) -> None:
    """Compaction rewrites the whole prompt, so it needs the prompt as ids and an empty cache."""
    if inputs_embeds is not None:
        raise ValueError(
            "Pass input_ids (with `<image>` placeholders) together with pixel_values, not inputs_embeds"
        )
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError(
            "pixel_values with a non-empty KV cache (past_key_values) is not supported: the prompt is "
            "compacted as a whole; start from an empty cache"
        )
    kwargs.pop("cache_position", None)  # positions of the uncompacted prompt; recomputed by the LLM


class LlavaPruMergeForConditionalGeneration(LlavaForConditionalGeneration):
    """[`LlavaForConditionalGeneration`] whose LLM sees only the PruMerge-reduced visual tokens."""

    config_class = LlavaPruMergeConfig
    # The reducer calls into the reduction layer's submodules, so vision layers must stay whole.
    _no_split_modules = [
        "CLIPEncoderLayer",
        "CLIPVisionEmbeddings",
        "LlavaMultiModalProjector",
        "LlamaDecoderLayer",
    ]

    def __init__(self, config: LlavaPruMergeConfig):
        LlavaPreTrainedModel.__init__(self, config)  # the stock __init__, with the PruMerge base model
        self.model = LlavaPruMergeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def reduce_image_tokens(self, pixel_values: torch.Tensor, **kwargs) -> ReducedTokens:
        """Per image, the reduced tokens (before the projector) and the patches they came from."""
        return self.model.reduce_image_tokens(pixel_values, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Overridden: with `pixel_values`, the sequence (and `labels`) are compacted first; see
        [`LlavaPruMergeCausalLMOutputWithPast`] for what the returned length means."""
        kwargs["logits_to_keep"] = logits_to_keep
        kwargs[CACHE_ARGUMENT] = cache = _pop_cache(past_key_values, kwargs)
        if pixel_values is None:
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                **kwargs,
            )
        _check_prefill(inputs_embeds, cache, kwargs)
        compact = self.model.compact_inputs(
            input_ids,
            pixel_values,
            attention_mask,
            labels,
            None,
            vision_feature_layer,
            vision_feature_select_strategy,
        )
        outputs = super().forward(
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            position_ids=compact.position_ids,
            labels=compact.labels,
            **kwargs,
        )
        return LlavaPruMergeCausalLMOutputWithPast(
            **{**outputs, **_image_features_field(compact)},
            attention_mask=compact.attention_mask,
            visual_token_counts=compact.visual_token_counts,
            visual_token_centers=compact.visual_token_centers,
        )

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """Overridden: with `pixel_values`, the prompt is compacted (left-padded) once, then decoded
        from its embeddings; the returned sequences start with the compacted prompt."""
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is None:
            return super().generate(inputs, generation_config, **kwargs)
        input_ids = kwargs.pop("input_ids", None)
        if inputs is not None and input_ids is not None:
            raise ValueError("Pass the prompt once: either as `inputs` or as `input_ids`")
        compact = self.model.compact_inputs(
            input_ids if input_ids is not None else inputs,
            pixel_values,
            kwargs.pop("attention_mask", None),
            padding_side="left",
            vision_feature_layer=kwargs.pop("vision_feature_layer", None),
            vision_feature_select_strategy=kwargs.pop("vision_feature_select_strategy", None),
        )
        return super().generate(
            input_ids=compact.input_ids,
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            generation_config=generation_config,
            **kwargs,
        )


__all__ = ["LlavaPruMergeModel", "LlavaPruMergeForConditionalGeneration"]
