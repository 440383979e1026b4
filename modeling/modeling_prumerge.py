# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""What every PruMerge LLaVA-family model adds to its stock classes, whatever its vision inputs.

Data flows one way, as in transformers' own LLaVA: the head's `forward` calls the base model once;
the base model encodes and reduces the visual inputs (`visual_tokens`, the one method each
architecture implements), compacts the prompt once (`compact_inputs`) and runs the language model;
the head applies `lm_head` and the loss on the compacted labels the base model returns.
`generate` encodes, reduces and compacts the prompt once (the same `visual_tokens` and
`compact_inputs`), then decodes from the compacted ids with the reduced tokens as
`mm_encoder_outputs`, which the prefill writes in place as stock writes image features; it returns
the caller's prompt followed by the new tokens, as stock models do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from .compaction import (
    CompactedBatch,
    VisualTokens,
    centers_by_sample,
    compact_batch,
    fits_in_place,
    has_placeholders,
    input_padding_side,
    item_spans,
    items_per_sample,
    placed_batch,
    repeat_per_prompt,
    write_in_place,
    write_static_layout,
)
from .errors import VisualInputError
from .reduction_settings import ReductionSettings
from .runtime_compat import (
    CACHE_ARGUMENT,
    CACHE_ARGUMENT_NAMES,
    GENERATE_TAKES_ENCODER_OUTPUTS,
    IMAGE_FEATURES_AS_OUTPUT,
    encoder_output_fields,
    pop_cache,
)
from .token_reduction import ReducedTokens, batched_host_reads, host_copy, prefetch
from .vision_encoding import (
    EncodedPatches,
    check_pixel_values,
    encode_patches,
    has_class_token,
    patches_from_hidden_states,
)

# Keyword arguments of `visual_tokens` that choose how visual inputs are read, not visual inputs themselves.
VISUAL_OPTIONS = (
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "reduction",
    "image_sizes",
    "image_sizes_videos",
    "batch_num_images",
    "vision_aspect_ratio",
    "image_grid_thw",
    "video_grid_thw",
    "second_per_grid_ts",
    "mm_token_type_ids",
)

logger = logging.get_logger(__name__)


@dataclass
class CompactionOutputFields:
    r"""
    attention_mask (`torch.LongTensor` of shape `(batch_size, compacted_length)`, *optional*):
        The attention mask of the compacted sequence the language model saw (set when visual inputs were
        given); hidden states and logits have this length.
    visual_token_counts (`list[int]`, *optional*): per image, how many visual tokens reached the language model.
    visual_token_centers (`torch.LongTensor` of shape `(batch_size, images, tokens)`, *optional*): per sample and
        image (in prompt order), the kept patch indices in token order (LLaVA-NeXT: `(view, patch)` pairs, a
        trailing dimension of 2); -1 past a sample's images and past an image's kept patches.
    """

    attention_mask: torch.LongTensor | None = None
    visual_token_counts: list[int] | None = None
    visual_token_centers: torch.LongTensor | None = None


@dataclass
class VideoCompactionOutputFields:
    r"""
    video_token_counts (`list[int]`, *optional*): per video, how many tokens reached the language model.
    video_token_centers (`torch.LongTensor` of shape `(batch_size, videos, tokens, 2)`, *optional*): per sample
        and video, `(frame, patch)` of each kept patch in token order (the frames' [CLS] and summary tokens are
        not patches); -1 past a sample's videos and past a video's kept patches.
    """

    video_token_counts: list[int] | None = None
    video_token_centers: torch.LongTensor | None = None


# Per modality, the output fields that report how many tokens of each item reached the language model.
COUNT_FIELDS = {
    "image": ("visual_token_counts", "visual_token_centers"),
    "video": ("video_token_counts", "video_token_centers"),
}


@dataclass
class CompactedModelOutputFields(CompactionOutputFields):
    r"""
    position_ids (`torch.LongTensor` of shape `(batch_size, compacted_length)`, *optional*):
        The positions of the compacted sequence.
    labels (`torch.LongTensor` of shape `(batch_size, compacted_length)`, *optional*):
        The labels aligned with the compacted sequence (-100 on visual tokens and padding), when labels were given.
    """

    position_ids: torch.LongTensor | None = None
    labels: torch.LongTensor | None = None


@dataclass
class ReducedVisualFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    `get_image_features`' (`get_video_features`') output: the vision tower's outputs, with `pooler_output`
    the projected reduced tokens (one `[n_i, hidden]` tensor per image or video).

    visual_token_centers (`list[torch.LongTensor]`, *optional*): per item, the kept patches in token order.
    placeholder_lengths (`list[int]`, *optional*): per item, the placeholders the stock processor writes for it.
    items_per_prompt (`list[int]`, *optional*): for the tokens of a compacted prompt (`generate`'s), how many
        items each prompt row holds.
    """

    visual_token_centers: list[torch.LongTensor] | None = None
    placeholder_lengths: list[int] | None = None
    items_per_prompt: list[int] | None = None


def visual_features_output(tokens: VisualTokens, **fields):
    """What `get_image_features` returns: transformers 5 the output object, 4.x the per-item list alone."""
    if not IMAGE_FEATURES_AS_OUTPUT:
        return tokens.features
    return ReducedVisualFeaturesOutput(
        pooler_output=tokens.features,
        visual_token_centers=tokens.centers,
        placeholder_lengths=tokens.expanded_lengths,
        **fields,
    )


def visual_tokens_of_encoder_outputs(model, mm_encoder_outputs: dict | None, rows: int) -> list[VisualTokens]:
    """The visual tokens in `mm_encoder_outputs` (`get_image_features` outputs by modality) for a batch of `rows`.

    An output without `placeholder_lengths` (`generate`'s) is for a compacted prompt: each item has as many
    placeholders as tokens. Where the batch holds each of its prompts several times (beams, and
    `num_return_sequences`: transformers 5 copies the items itself, 4.x does not), `items_per_prompt` says
    which items to copy with each prompt.
    """
    visual = []
    for modality in model.modality_inputs:
        output = (mm_encoder_outputs or {}).get(modality)
        if output is None:
            continue
        features = list(output.pooler_output)
        counts = [len(tokens) for tokens in features]
        lengths = getattr(output, "placeholder_lengths", None)
        centers = getattr(output, "visual_token_centers", None)
        if lengths is None or len(lengths) != len(features):
            lengths = counts
        if centers is None or len(centers) != len(features):
            centers = [None] * len(features)
        token_id = getattr(model.config, f"{modality}_token_id")
        tokens = VisualTokens(modality, token_id, features, list(lengths), list(centers))
        per_prompt = getattr(output, "items_per_prompt", None)
        copies = rows // len(per_prompt) if per_prompt else 1
        if copies > 1 and sum(per_prompt) == len(features):  # not copied yet
            tokens = repeat_per_prompt(tokens, per_prompt, copies)
        visual.append(tokens)
    return visual


class PruMergeModelMixin:
    """The base model's part: visual inputs -> reduced tokens -> compacted prompt -> language model.

    A subclass (listed first among the bases, before the stock model class) implements
    `visual_tokens(**visual_inputs, reduction=None)`, returning one `VisualTokens` per modality given,
    and names the argument that carries each modality in `modality_inputs`.
    """

    modality_inputs: dict[str, str] = {"image": "pixel_values"}  # modality -> its forward argument

    @classmethod
    def is_custom_code(cls) -> bool:
        """Overridden: the weights initialize through the stock classes' `_init_weights` (transformers' own init
        functions), so transformers initializes missing weights as it does for the stock classes."""
        return False

    def reduction_settings(self, reduction: ReductionSettings | None = None) -> ReductionSettings:
        """The settings of one call: `reduction` when given, else the config's."""
        return reduction if reduction is not None else self.config.reduction_settings

    def visual_tokens(
        self, reduction: ReductionSettings | None = None, **visual_inputs
    ) -> list[VisualTokens]:
        raise NotImplementedError(f"{type(self).__name__} must implement visual_tokens")

    # ---- images through a CLIP-style tower (every LLaVA-family model has one)

    image_tower_attribute = "vision_tower"  # where the stock model keeps its image tower

    def image_feature_settings(self, vision_feature_layer, vision_feature_select_strategy, reduction):
        """(feature layer(s), keep the [CLS] row, reducer settings) of one call, validated."""
        settings = self.reduction_settings(reduction)
        feature_layer = (
            self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        )
        strategy = (
            self.config.vision_feature_select_strategy
            if vision_feature_select_strategy is None
            else vision_feature_select_strategy
        )
        if strategy not in ("default", "full"):
            raise VisualInputError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}"
            )
        tower = getattr(self, self.image_tower_attribute)
        if strategy == "full" and settings.reduces and has_class_token(tower):
            raise VisualInputError(
                f"token_reduction={settings.token_reduction!r} reduces patch tokens and needs "
                "vision_feature_select_strategy='default' (the [CLS] token is not a patch)"
            )
        return feature_layer, strategy == "full", settings

    def encode_patches(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> EncodedPatches:
        """The image tower's part: patch features of the feature layer(s) and, for the reducer, the
        reduction layer's [CLS] attention and keys (see `vision_encoding.encode_patches`)."""
        check_pixel_values(pixel_values, self.config.vision_config)
        feature_layer, keep_class_token, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        tower = getattr(self, self.image_tower_attribute)
        return encode_patches(tower, pixel_values, feature_layer, keep_class_token, settings)

    def reduce_patches(
        self, encoded: EncodedPatches, reduction: ReductionSettings | None = None
    ) -> ReducedTokens:
        """The reducer's part, with this call's settings (default: the config's)."""
        return encoded.reduce(self.reduction_settings(reduction))

    def reduce_image_tokens(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> ReducedTokens:
        """Image tower and reducer: per image, the reduced tokens before the projector."""
        encoded = self.encode_patches(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, reduction
        )
        return self.reduce_patches(encoded, reduction)

    def tokens_of_images(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        reduction: ReductionSettings | None = None,
    ) -> VisualTokens:
        """Images through the tower, the reducer and the projector, ready for compaction."""
        reduced = self.reduce_image_tokens(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, reduction
        )
        return self.image_tokens(reduced, vision_feature_select_strategy)

    def image_placeholder_count(self, vision_feature_select_strategy: str | None = None) -> int:
        """How many placeholders the stock processor writes for an image, as it derives them: the tower's
        sequence (its patches and [CLS] token, if it has one), less the first row with the "default" strategy."""
        vision = self.config.vision_config
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        tower = getattr(self, self.image_tower_attribute)
        return (
            (vision.image_size // vision.patch_size) ** 2 + has_class_token(tower) - (strategy == "default")
        )

    def image_tokens(
        self, reduced: ReducedTokens, vision_feature_select_strategy: str | None = None
    ) -> VisualTokens:
        """Reduced image tokens projected into the language model's space, ready for compaction."""
        projected = self.multi_modal_projector(torch.cat(reduced.features, dim=0))  # [sum n_i, hidden]
        features = list(projected.split(reduced.num_tokens, dim=0))
        expanded = [self.image_placeholder_count(vision_feature_select_strategy)] * len(features)
        return VisualTokens("image", self.config.image_token_id, features, expanded, reduced.centers)

    def image_features(
        self, pixel_values, vision_feature_layer, vision_feature_select_strategy, reduction, kwargs: dict
    ):
        """`get_image_features` as stock (the whole tower runs, its outputs are returned), with the projected
        reduced tokens as `pooler_output`; transformers 4.x: that list alone."""
        check_pixel_values(pixel_values, self.config.vision_config)
        feature_layer, keep_class_token, settings = self.image_feature_settings(
            vision_feature_layer, vision_feature_select_strategy, reduction
        )
        tower = getattr(self, self.image_tower_attribute)
        outputs, hidden_states = self.run_whole_tower(tower, pixel_values, kwargs)
        encoded = patches_from_hidden_states(tower, hidden_states, feature_layer, keep_class_token, settings)
        tokens = self.image_tokens(encoded.reduce(settings), vision_feature_select_strategy)
        return visual_features_output(tokens, **outputs)

    @staticmethod
    def run_whole_tower(tower, pixel_values: torch.Tensor, kwargs: dict) -> tuple[dict, tuple]:
        """A stock tower's outputs (hidden states only if asked for, as stock) and all its hidden states."""
        hidden_states_wanted = kwargs.pop("output_hidden_states", None)
        if hidden_states_wanted is None:
            hidden_states_wanted = tower.config.output_hidden_states
        outputs = tower(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        reported = {
            "last_hidden_state": outputs.last_hidden_state,
            "hidden_states": outputs.hidden_states if hidden_states_wanted else None,
            "attentions": outputs.attentions,
        }
        return reported, outputs.hidden_states

    # ---- the forward every architecture shares

    def prompt_positions(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, visual_inputs: dict
    ):
        """The positions of this call's prompt before compaction: as given (LLaVA-family language models count
        0, 1, ... themselves). Qwen-VL overrides it with its 3-D positions."""
        return position_ids

    def stock_layout_prompt(
        self, visual: list[VisualTokens], input_ids, attention_mask, labels, position_ids
    ):
        """(input_ids, attention_mask, labels) in the layout `prompt_positions` reads: as given for LLaVA-family
        models, which take runs of any accepted length; Qwen-VL widens each run to stock's expansion."""
        return input_ids, attention_mask, labels

    def remember_positions(self, position_ids, attention_mask, cache) -> None:
        """Called with the positions the language model is about to read; LLaVA-family models keep nothing."""

    def compact_inputs(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        *,
        visual: list[VisualTokens],
        inputs_embeds: torch.Tensor | None = None,
        padding_side: str | None = None,
    ) -> CompactedBatch:
        """The batch the language model sees: each placeholder run replaced by its item's reduced tokens.

        `visual` comes from `visual_tokens` (or is built from tokens already reduced, as `bench` does).
        With `inputs_embeds` and no `input_ids`, placeholders are found by their embedding, and the
        compacted batch has no `input_ids`. `padding_side` defaults to the right when the input was
        right-padded, else to the left, so that position -1 is every sample's last token.
        """
        text_embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        visual, spans = self.item_spans(visual, input_ids, inputs_embeds, labels)
        if fits_in_place(visual, spans):  # nothing to compact: the prompt keeps its layout
            mask = self.padding_mask(text_embeds, attention_mask)
            return placed_batch(
                text_embeds,
                mask,
                visual,
                spans,
                input_ids=input_ids,
                labels=labels,
                position_ids=position_ids,
            )
        return self.compact(
            text_embeds, attention_mask, visual, spans, input_ids, labels, position_ids, padding_side
        )

    def item_spans(self, visual: list[VisualTokens], input_ids, inputs_embeds, labels):
        """Where each item's placeholders are, per sample (see `compaction.item_spans`), and the items (repeated
        where the batch holds copies of its prompts)."""
        self.check_prompt(input_ids, inputs_embeds, labels)
        placeholders = self.placeholder_masks(visual, input_ids, inputs_embeds)
        return visual, item_spans(visual, placeholders)

    def compact(
        self, text_embeds, attention_mask, visual, spans, input_ids, labels, position_ids, padding_side=None
    ) -> CompactedBatch:
        """`compaction.compact_batch` with this model's padding token (the padding side read from the host)."""
        if padding_side is None and torch.is_tensor(attention_mask):
            padding_side = input_padding_side(
                host_copy("padding side", attention_mask[:, -1:], attention_mask)
            )
        return compact_batch(
            text_embeds,
            self.padding_mask(text_embeds, attention_mask),
            visual,
            spans,
            input_ids=input_ids,
            labels=labels,
            position_ids=position_ids,
            padding_side=padding_side,
            pad_token_id=self.padding_token_id,
        )

    @property
    def padding_token_id(self) -> int:
        """The id that re-pads rebuilt prompts: the language model's padding token (0 when it has none; stock
        LLaVA-NeXT 4.x sets its own `pad_token_id` attribute)."""
        pad_token_id = self.config.text_config.pad_token_id
        return 0 if pad_token_id is None else pad_token_id

    def check_prompt(self, input_ids, inputs_embeds, labels) -> torch.Tensor:
        """The prompt (`input_ids`, else `inputs_embeds`) that visual inputs go into, with `labels` of its shape."""
        prompt = input_ids if input_ids is not None else inputs_embeds
        if prompt is None:
            raise VisualInputError("visual inputs need the prompt: pass input_ids (or inputs_embeds)")
        if prompt.shape[0] == 0:
            raise VisualInputError("Empty batch: input_ids has no samples")
        if labels is not None and labels.shape != prompt.shape[:2]:
            raise VisualInputError(
                f"labels must have the prompt's shape [batch, length] = {tuple(prompt.shape[:2])}, got "
                f"{tuple(labels.shape)}; use -100 where no loss is wanted"
            )
        return prompt

    @staticmethod
    def padding_mask(prompt: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The [B, L] padding mask that compaction rebuilds (ones when none is given)."""
        if attention_mask is None:
            return torch.ones(prompt.shape[:2], dtype=torch.long, device=prompt.device)
        if not torch.is_tensor(attention_mask) or attention_mask.shape != prompt.shape[:2]:
            shape = (
                tuple(attention_mask.shape)
                if torch.is_tensor(attention_mask)
                else type(attention_mask).__name__
            )
            raise VisualInputError(
                f"With visual inputs, attention_mask must be the [batch, length] padding mask of the prompt, "
                f"{tuple(prompt.shape[:2])}, got {shape} (a 4-D mask cannot be compacted: "
                "the language model builds its own from the compacted prompt)"
            )
        return attention_mask

    def placeholder_mask(
        self, modality: str, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """[B, L] where the prompt holds `modality`'s placeholder: from `input_ids`, else by comparing
        `inputs_embeds` with the placeholder token's embedding (as stock transformers 5.x does)."""
        token_id = getattr(self.config, f"{modality}_token_id")
        if input_ids is not None:
            return input_ids == token_id
        token = torch.full((), token_id, dtype=torch.long, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(token)).all(-1)

    def prefetch_prompt_layout(self, input_ids, inputs_embeds, attention_mask) -> None:
        """Queue what compaction reads of the prompt (each modality's placeholders, the padding side), so that
        it comes back with the first read of the forward (see `HostReads`) instead of in a read of its own."""
        prompt = input_ids if input_ids is not None else inputs_embeds
        for modality in self.modality_inputs:
            prefetch(
                f"{modality} placeholders", self.placeholder_mask(modality, input_ids, inputs_embeds), prompt
            )
        if torch.is_tensor(attention_mask) and attention_mask.dim() == 2:
            prefetch("padding side", attention_mask[:, -1:], attention_mask)

    def placeholder_masks(
        self,
        visual: list[VisualTokens],
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Per modality given, where its placeholders are ([B, L], on the host: compaction reads them there).
        Placeholders of a modality whose inputs are missing would be read as text: an error."""
        given = {tokens.modality for tokens in visual}
        prompt = input_ids if input_ids is not None else inputs_embeds
        masks = {}
        for modality, argument in self.modality_inputs.items():
            mask = self.placeholder_mask(modality, input_ids, inputs_embeds)
            if modality in given:
                masks[modality] = host_copy(f"{modality} placeholders", mask, prompt)
            elif input_ids is not None and has_placeholders(
                host_copy(f"{modality} placeholders", mask, prompt)
            ):
                raise VisualInputError(
                    f"The prompt holds `<{modality}>` tokens but no {argument} were given: pass the "
                    f"{modality}(s) as {argument}, or remove `<{modality}>` from the text"
                )
        return masks

    def compiles_static_layout(self, visual: list[VisualTokens], reduction: ReductionSettings | None) -> bool:
        """Whether this forward writes the visual tokens without reading the prompt's layout back: under
        torch.compile, where a read would break the graph, when the settings fix every item's count (an
        adaptive selection reads its counts back, and so breaks the graph anyway) and tokens are placed by
        one-row positions. The prompt must then hold one placeholder per reduced token (see
        `compaction.write_static_layout`)."""
        return (
            torch.compiler.is_compiling()
            and self.reduction_settings(reduction).counts_fixed
            and all(tokens.places is None for tokens in visual)
        )

    def check_prefill(self, cache, kwargs: dict) -> None:
        """Compaction rewrites the whole prompt, so visual inputs need an empty KV cache."""
        if cache is not None and cache.get_seq_length() > 0:
            raise VisualInputError(
                "Visual inputs with a non-empty KV cache are not supported: PruMerge compacts the prompt with its "
                "images as a whole. Start from an empty cache, or continue from text alone: the sequences `generate` "
                "returned (plus any new tokens) as input_ids, with its cache and no visual inputs"
            )
        kwargs.pop("cache_position", None)  # positions of the uncompacted prompt; the LLM recomputes them

    def reported_mask(self, inputs_embeds: torch.Tensor, attention_mask) -> dict:
        """The output's `attention_mask` when the prompt keeps its layout: the padding mask; a 4-D mask, or
        masks per layer type (compiled decoding's), is not reported."""
        if attention_mask is None or (torch.is_tensor(attention_mask) and attention_mask.dim() == 2):
            return {"attention_mask": self.padding_mask(inputs_embeds, attention_mask)}
        return {}

    @staticmethod
    def has_visual_inputs(visual_inputs: dict) -> bool:
        """Whether raw visual inputs are given (options such as `image_sizes` alone are none)."""
        return any(value is not None for key, value in visual_inputs.items() if key not in VISUAL_OPTIONS)

    def visual_inputs_tokens(
        self, mm_encoder_outputs: dict | None, visual_inputs: dict, rows: int
    ) -> list[VisualTokens]:
        """The visual tokens of one call for a batch of `rows` prompts: from raw visual inputs (options such as
        `image_sizes` alone are none), or encoded beforehand in `mm_encoder_outputs`; not both."""
        visual = visual_tokens_of_encoder_outputs(self, mm_encoder_outputs, rows)
        if self.has_visual_inputs(visual_inputs):
            if visual:
                raise VisualInputError(
                    "Pass the visual inputs once: as pixel values or in mm_encoder_outputs"
                )
            visual = self.visual_tokens(**visual_inputs)
        return visual

    def compacted_forward(
        self,
        output_class,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        past_key_values,
        inputs_embeds: torch.Tensor | None,
        labels: torch.LongTensor | None,
        mm_encoder_outputs: dict | None,
        visual_inputs: dict,
        kwargs: dict,
    ):
        """The base model's forward: visual inputs (raw, or encoded beforehand in `mm_encoder_outputs`) ->
        reduced tokens -> the language model on the compacted prompt -> `output_class`."""
        cache = pop_cache(kwargs, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):  # as stock: the embeddings would silently win
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        with batched_host_reads():  # one host read for the checks, an adaptive selection and the layout
            return self._compacted_forward(
                output_class, input_ids, attention_mask, position_ids, cache, inputs_embeds, labels,
                mm_encoder_outputs, visual_inputs, kwargs,
            )  # fmt: skip

    def _compacted_forward(
        self, output_class, input_ids, attention_mask, position_ids, cache, inputs_embeds, labels,
        mm_encoder_outputs, visual_inputs: dict, kwargs: dict,
    ):  # fmt: skip
        prompt = input_ids if input_ids is not None else inputs_embeds
        if mm_encoder_outputs or self.has_visual_inputs(visual_inputs):
            self.prefetch_prompt_layout(input_ids, inputs_embeds, attention_mask)
        visual = self.visual_inputs_tokens(mm_encoder_outputs, visual_inputs, prompt.shape[0])
        if visual:
            check_positions(position_ids, prompt)
            self.check_prefill(cache, kwargs)
            input_ids, attention_mask, labels = self.stock_layout_prompt(
                visual, input_ids, attention_mask, labels, position_ids
            )
        position_ids = self.prompt_positions(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, visual_inputs
        )
        static_layout = self.compiles_static_layout(visual, visual_inputs.get("reduction"))
        fields = self.language_model_outputs(
            input_ids,
            attention_mask,
            position_ids,
            cache,
            inputs_embeds,
            labels,
            visual,
            static_layout,
            **kwargs,
        )
        return output_class(**fields)

    def language_model_outputs(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        cache,
        inputs_embeds: torch.Tensor | None,
        labels: torch.LongTensor | None,
        visual: list[VisualTokens] | None,
        static_layout: bool = False,
        **kwargs,
    ) -> dict:
        """The fields of the base model's output: the language model on the compacted prompt (or on the
        prompt as given, without visual inputs: placeholders are then ordinary tokens, as in stock LLaVA),
        the compacted mask, positions and labels, and per item the tokens that reached the language model.

        Where every item has exactly as many placeholders as tokens (no reduction, or a prompt compacted
        before, as `generate` passes it), the tokens are written in place as stock writes features, and the
        mask, positions and labels go to the language model as given. With `static_layout` (see
        `compiles_static_layout`) the tokens are written in place without reading the layout back."""
        fields = {"labels": labels}
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if visual and static_layout:
            self.check_prompt(input_ids, inputs_embeds, labels)
            placeholders = {
                tokens.modality: self.placeholder_mask(tokens.modality, input_ids, inputs_embeds)
                for tokens in visual
            }
            inputs_embeds = write_static_layout(inputs_embeds, placeholders, visual)
            fields.update(self.reported_mask(inputs_embeds, attention_mask))
            for tokens in visual:  # the kept patches per sample need the layout on the host: not reported
                fields.update(encoder_output_fields(tokens.modality, tokens.features))
                fields[COUNT_FIELDS[tokens.modality][0]] = tokens.counts
        elif visual:
            visual, spans = self.item_spans(visual, input_ids, inputs_embeds, labels)
            if fits_in_place(visual, spans):
                inputs_embeds = write_in_place(inputs_embeds, visual, spans)
                fields.update(self.reported_mask(inputs_embeds, attention_mask))
            else:
                compact = self.compact(
                    inputs_embeds, attention_mask, visual, spans, input_ids, labels, position_ids
                )
                inputs_embeds, attention_mask, position_ids = (
                    compact.inputs_embeds,
                    compact.attention_mask,
                    compact.position_ids,
                )
                fields = {
                    "labels": compact.labels,
                    "attention_mask": attention_mask,
                    "position_ids": position_ids,
                }
            centers = centers_by_sample(visual, spans)
            for tokens in visual:
                fields.update(encoder_output_fields(tokens.modality, tokens.features))
                counts, centers_field = COUNT_FIELDS[tokens.modality]
                fields.update({counts: tokens.counts, centers_field: centers[tokens.modality]})
        self.remember_positions(position_ids, attention_mask, cache)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **{CACHE_ARGUMENT: cache},
            **kwargs,
        )
        return {**outputs, **fields}


class PruMergeForConditionalGenerationMixin:
    """The head's part: `lm_head` and the loss on what the base model returns; `generate` on the compacted prompt.

    A subclass (listed first among the bases) names the keyword arguments that carry visual inputs
    in `visual_input_names`, and those that only describe them (e.g. `image_sizes`) in `visual_option_names`.
    """

    visual_input_names: tuple[str, ...] = ("pixel_values",)
    visual_option_names: tuple[str, ...] = ()

    @classmethod
    def is_custom_code(cls) -> bool:
        """Overridden: see `PruMergeModelMixin.is_custom_code`."""
        return False

    def reduce_image_tokens(self, pixel_values: torch.Tensor, **kwargs):
        """Per image, the reduced tokens (before the projector) and the patches they came from."""
        return self.model.reduce_image_tokens(pixel_values, **kwargs)

    def head_forward(self, output_class, labels, logits_to_keep, model_inputs: dict, kwargs: dict):
        """The head's forward: the base model once (it compacts the prompt and `labels`), then `lm_head` and
        the loss -> `output_class`."""
        outputs = self.model(labels=labels, return_dict=True, **model_inputs, **kwargs)
        return output_class(**self.language_modeling_outputs(outputs, labels, logits_to_keep, kwargs))

    def language_modeling_outputs(self, outputs, labels, logits_to_keep, kwargs: dict) -> dict:
        """The head's output fields from the base model's `outputs` (a compacted batch when visual inputs were given)."""
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=outputs.labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        passed_on = {
            key: value
            for key, value in outputs.items()
            if key not in ("last_hidden_state", "labels", "position_ids")
        }
        return {"loss": loss, "logits": logits, **passed_on}

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, **kwargs):
        """Overridden: the reduced tokens reach the prefill only (transformers 5 drops `mm_encoder_outputs` once
        the cache holds the prompt; 4.x would pass them to every step)."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, *args, inputs_embeds=inputs_embeds, **kwargs
        )
        cache = next(
            (model_inputs[name] for name in CACHE_ARGUMENT_NAMES if model_inputs.get(name) is not None), None
        )
        if hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            model_inputs.pop("mm_encoder_outputs", None)
        return model_inputs

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """Overridden: with visual inputs, the vision tower, the reducer and compaction run once, here; the
        decoding starts from the compacted (left-padded) ids, whose placeholders the prefill fills with the
        reduced tokens in place. As for stock models, the output is the prompt as passed followed by the new
        tokens (only the new tokens for a prompt given as `inputs_embeds` alone), `max_length` /
        `min_length` count the prompt as passed, and a cache filled here continues from the returned
        sequences. A static cache is sized from the prompt as passed (see `_static_cache`), so that calls of
        one shape share one compiled graph. `reduction` (ReductionSettings) overrides the config's."""
        visual_inputs = {name: kwargs.pop(name, None) for name in self.visual_input_names}
        visual_inputs = {name: value for name, value in visual_inputs.items() if value is not None}
        options = {name: kwargs.pop(name, None) for name in self.visual_option_names}
        encoded = kwargs.pop("mm_encoder_outputs", None)
        reduction = kwargs.pop("reduction", None)
        input_ids = kwargs.pop("input_ids", None)
        if inputs is not None and input_ids is not None:
            raise VisualInputError("Pass the prompt once: either as `inputs` or as `input_ids`")
        input_ids = inputs if input_ids is None else input_ids
        cache = next((kwargs[name] for name in CACHE_ARGUMENT_NAMES if kwargs.get(name) is not None), None)
        cached_prompt = getattr(cache, CachedPrompt.attribute, None)
        if visual_inputs or encoded:
            prompt_length = (input_ids if input_ids is not None else kwargs.get("inputs_embeds")).shape[1]
            compact = self._compacted_prompt(
                input_ids, {**visual_inputs, **options}, encoded, reduction, cache, kwargs
            )
            ids, mask = compact.input_ids, compact.attention_mask
            if ids is None or not GENERATE_TAKES_ENCODER_OUTPUTS:
                _refuse_candidate_decoding(kwargs)
            if ids is not None:
                prompt = {"input_ids": ids, "mm_encoder_outputs": encoder_outputs_of(compact)}
            else:
                prompt = {"inputs_embeds": compact.inputs_embeds}
            prompt.update(self.generation_positions(compact))
        elif cached_prompt is not None and cache.get_seq_length() > 0:
            prompt_length = input_ids.shape[1] if input_ids is not None else 0
            ids, mask = cached_prompt.continuation(input_ids, kwargs.pop("attention_mask", None))
            prompt = {"input_ids": ids, **self.continuation_generation_positions(ids)}
        else:
            self._warn_if_placeholders_without_visual_inputs(input_ids, cache)
            return super().generate(input_ids, generation_config, **kwargs)

        kwargs.update(self._lengths_from_the_callers_prompt(generation_config, kwargs, prompt_length))
        if cache is None and ids is not None:
            kwargs.update(self._static_cache(generation_config, kwargs, max(prompt_length, ids.shape[1])))
        if kwargs.get("streamer") is not None and input_ids is not None:
            kwargs["streamer"] = CallersPromptStreamer(kwargs["streamer"], input_ids)
        outputs = super().generate(
            **prompt, attention_mask=mask, generation_config=generation_config, **kwargs
        )
        if ids is None:  # a prompt given as embeddings alone: only the new tokens, as stock
            return outputs
        filled_cache = getattr(outputs, CACHE_ARGUMENT, None)  # the output field is named as the argument
        filled_cache = cache if filled_cache is None else filled_cache
        if hasattr(filled_cache, "get_seq_length"):  # a Cache object (not a legacy tuple)
            CachedPrompt(input_ids, ids, mask).record(filled_cache)
        return _with_callers_prompt(outputs, input_ids, ids.shape[1])

    def generation_positions(self, compact: CompactedBatch) -> dict:
        """What `generate` passes besides the compacted prompt to place it: nothing for LLaVA-family models
        (generate counts positions over the compacted mask); Qwen-VL passes its 3-D positions."""
        return {}

    def continuation_generation_positions(self, ids: torch.Tensor) -> dict:
        """What `generate` passes to place tokens that continue a cached compacted prompt (`ids`: the compacted
        prompt and the new tokens): nothing for LLaVA-family models; Qwen-VL passes its 3-D positions."""
        return {}

    def _compacted_prompt(
        self, input_ids, visual_inputs: dict, encoded: dict | None, reduction, cache, kwargs: dict
    ) -> CompactedBatch:
        """The prompt with its visual inputs reduced and compacted, left-padded for decoding."""
        with batched_host_reads():  # as in the forward: one host read
            return self._compacted_prompt_batched(input_ids, visual_inputs, encoded, reduction, cache, kwargs)

    def _compacted_prompt_batched(
        self, input_ids, visual_inputs: dict, encoded: dict | None, reduction, cache, kwargs: dict
    ) -> CompactedBatch:
        self.model.check_prefill(cache, kwargs)
        inputs_embeds = kwargs.pop("inputs_embeds", None)
        rows = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        options = {
            "reduction": reduction,
            "vision_feature_layer": kwargs.pop("vision_feature_layer", None),
            "vision_feature_select_strategy": kwargs.pop("vision_feature_select_strategy", None),
        }
        attention_mask, position_ids = kwargs.pop("attention_mask", None), kwargs.pop("position_ids", None)
        self.model.prefetch_prompt_layout(input_ids, inputs_embeds, attention_mask)
        visual = self.model.visual_inputs_tokens(encoded, {**options, **visual_inputs}, rows)
        if visual:
            input_ids, attention_mask, _ = self.model.stock_layout_prompt(
                visual, input_ids, attention_mask, None, position_ids
            )
        position_ids = self.model.prompt_positions(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, visual_inputs
        )
        return self.model.compact_inputs(
            input_ids,
            attention_mask,
            position_ids=position_ids,
            visual=visual,
            inputs_embeds=inputs_embeds,
            padding_side="left",
        )

    def _static_cache(self, generation_config, kwargs: dict, prompt_length: int) -> dict:
        """For `cache_implementation="static"` (or "offloaded_static"), the cache itself, sized for the prompt as
        passed (or the compacted one, when a single `<image>` made it longer) plus the new tokens: the
        compacted length differs from call to call, and a cache sized from it would recompile compiled
        decoding whenever it grows."""
        config = generation_config if generation_config is not None else self.generation_config
        implementation = kwargs.get("cache_implementation", getattr(config, "cache_implementation", None))
        if implementation not in ("static", "offloaded_static"):
            return {}
        new_tokens = kwargs.get("max_new_tokens") or config.max_new_tokens
        if (
            new_tokens is None
        ):  # `max_length` counts the prompt as passed (see `_lengths_from_the_callers_prompt`)
            new_tokens = max(config.max_length - prompt_length, 1)
        cache = StaticCache(
            config=self.config.get_text_config(decoder=True),
            max_cache_len=prompt_length + new_tokens,
            offloading=implementation == "offloaded_static",
        )
        return {"cache_implementation": None, CACHE_ARGUMENT: cache}

    def _warn_if_placeholders_without_visual_inputs(self, input_ids, cache) -> None:
        """A prompt with placeholders but no visual inputs is usually a mistake, yet stock LLaVA embeds them as
        ordinary tokens (assisted decoding, prompt lookup and decode steps rely on it): warn, once."""
        if input_ids is None or (cache is not None and cache.get_seq_length() > 0):
            return
        for modality, argument in self.model.modality_inputs.items():
            if (input_ids == getattr(self.config, f"{modality}_token_id")).any():
                logger.warning_once(
                    f"The prompt holds `<{modality}>` tokens but no {argument} were given: they are read as ordinary "
                    f"tokens. Pass {argument} to give the model the {modality}."
                )

    def _lengths_from_the_callers_prompt(self, generation_config, kwargs: dict, prompt_length: int) -> dict:
        """`max_length` and `min_length` count the prompt as passed, not the compacted one: expressed as
        new-token counts, which mean the same for both."""
        config = generation_config if generation_config is not None else self.generation_config

        def setting(name: str):
            return kwargs[name] if kwargs.get(name) is not None else getattr(config, name, None)

        lengths = {}
        if setting("max_new_tokens") is None and setting("max_length") is not None:
            if prompt_length >= setting("max_length"):
                logger.warning(
                    f"Input length of input_ids is {prompt_length}, but `max_length` is set to "
                    f"{setting('max_length')}; one token is generated. Set `max_new_tokens` to choose how many."
                )
            lengths["max_new_tokens"] = max(setting("max_length") - prompt_length, 1)
            kwargs.pop("max_length", None)
        if setting("min_new_tokens") is None and setting("min_length"):
            lengths["min_new_tokens"] = max(setting("min_length") - prompt_length, 0)
            kwargs.pop("min_length", None)
        return lengths


@dataclass(frozen=True)
class CachedPrompt:
    """The prompt behind a KV cache that `generate` filled from a compacted prompt.

    The cache holds the compacted prompt, so continuing from the caller's ids (the returned sequences,
    plus any new tokens, as for stock models) needs the compacted ids they stand for.
    """

    callers_ids: torch.LongTensor  # [B, L] the prompt as passed to `generate`
    compacted_ids: torch.LongTensor  # [B, L'] the prompt the language model saw
    compacted_mask: torch.Tensor  # [B, L']

    attribute = "prumerge_prompt"  # where it is kept on the cache object

    def record(self, cache) -> None:
        setattr(cache, self.attribute, self)

    def continuation(self, input_ids: torch.LongTensor | None, attention_mask: torch.Tensor | None):
        """`input_ids` [B, L + new] (the caller's prompt, then tokens not yet in the cache) as the compacted
        (ids, mask) [B, L' + new] that the cache continues."""
        if input_ids is None:
            raise VisualInputError(
                "This KV cache holds a compacted prompt with visual tokens: continue with input_ids (the sequences "
                "`generate` returned, plus any new tokens), not inputs_embeds"
            )
        length = self.callers_ids.shape[1]
        copies = max(input_ids.shape[0] // self.callers_ids.shape[0], 1)
        callers, compacted, mask = (
            tensor.repeat_interleave(copies, dim=0).to(input_ids.device)
            for tensor in (self.callers_ids, self.compacted_ids, self.compacted_mask)
        )
        if (
            input_ids.shape[0] != callers.shape[0]
            or input_ids.shape[1] <= length
            or not torch.equal(input_ids[:, :length], callers)
        ):
            raise VisualInputError(
                "The KV cache was filled from another prompt: to continue from it, pass the sequences `generate` "
                "returned with this cache (plus any new tokens) as input_ids, or start from an empty cache"
            )
        new_mask = (
            torch.ones_like(input_ids[:, length:]) if attention_mask is None else attention_mask[:, length:]
        )
        ids = torch.cat([compacted, input_ids[:, length:]], dim=1)
        return ids, torch.cat([mask, new_mask.to(mask.dtype)], dim=1)


def check_positions(position_ids: torch.Tensor | None, prompt: torch.Tensor) -> None:
    """Positions given with visual inputs must be the prompt's ([batch, length], or [rows, batch, length] for
    3-D rotary positions): compaction keeps the kept tokens' columns, and would silently misread others."""
    if position_ids is not None and tuple(position_ids.shape[-2:]) != tuple(prompt.shape[:2]):
        raise VisualInputError(
            f"position_ids must end in the prompt's [batch, length] = {tuple(prompt.shape[:2])}, got "
            f"{tuple(position_ids.shape)}; pass the positions of the prompt as given (or none)"
        )


def encoder_outputs_of(compact: CompactedBatch) -> dict:
    """A compacted prompt's visual tokens as `mm_encoder_outputs` (`get_image_features`-style outputs by
    modality), without `placeholder_lengths`: each item has as many placeholders as tokens."""
    return {
        tokens.modality: ReducedVisualFeaturesOutput(
            pooler_output=tokens.features,
            visual_token_centers=tokens.centers,
            items_per_prompt=items_per_sample(compact.spans, tokens.modality),
        )
        for tokens in compact.visual
    }


def _refuse_candidate_decoding(kwargs: dict) -> None:
    """Assisted and prompt-lookup decoding re-run the prefill on ids the model cannot rebuild images from, here
    (transformers 4.x, or a prompt given as embeddings): refuse rather than decode from the wrong prompt."""
    if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens") is not None:
        raise VisualInputError(
            "Assisted and prompt-lookup decoding with images need transformers >= 5 and the prompt as input_ids "
            "(stock LLaVA refuses them as well on transformers 4.x); decode without them, or continue from text"
        )


class CallersPromptStreamer(BaseStreamer):
    """Gives a streamer the caller's prompt where `generate` would hand it the compacted one."""

    def __init__(self, streamer: BaseStreamer, prompt: torch.Tensor):
        self.streamer, self.prompt = streamer, prompt

    def put(self, value):
        if self.prompt is not None:  # the first call carries the prompt
            value, self.prompt = self.prompt.cpu(), None
        self.streamer.put(value)

    def end(self):
        self.streamer.end()


def _with_callers_prompt(outputs, input_ids: torch.Tensor, compacted_length: int):
    """`generate`'s output with the compacted prompt replaced by the caller's (one copy per returned row)."""
    sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
    prompts = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0).to(
        sequences.device
    )
    sequences = torch.cat([prompts, sequences[:, compacted_length:]], dim=1)
    if isinstance(outputs, torch.Tensor):
        return sequences
    outputs.sequences = sequences
    return outputs
