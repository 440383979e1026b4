"""What every PruMerge LLaVA-family model adds to its stock classes, whatever its vision inputs.

Data flows one way, as in transformers' own LLaVA: the head's `forward` calls the base model once;
the base model encodes and reduces the visual inputs (`visual_tokens`, the one method each
architecture implements), compacts the prompt once (`compact_inputs`) and runs the language model;
the head applies `lm_head` and the loss on the compacted labels the base model returns.
`generate` compacts the prompt with the same `compact_inputs`, then decodes from its embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .compaction import CompactedBatch, VisualTokens, compact_batch
from .errors import VisualInputError
from .reduction_settings import ReductionSettings
from .runtime_compat import CACHE_ARGUMENT, encoder_output_fields


@dataclass
class CompactionOutputFields:
    r"""
    attention_mask (`torch.LongTensor` of shape `(batch_size, compacted_length)`, *optional*):
        The attention mask of the compacted sequence the language model saw (set when visual inputs were
        given); hidden states and logits have this length.
    visual_token_counts (`list[int]`, *optional*): per image, how many visual tokens reached the language model.
    visual_token_centers (`list[torch.LongTensor]`, *optional*): per image, the kept patch indices in token order.
    """

    attention_mask: torch.LongTensor | None = None
    visual_token_counts: list[int] | None = None
    visual_token_centers: list[torch.LongTensor] | None = None


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


class PruMergeModelMixin:
    """The base model's part: visual inputs -> reduced tokens -> compacted prompt -> language model.

    A subclass (listed first among the bases, before the stock model class) implements
    `visual_tokens(**visual_inputs, reduction=None)`, returning one `VisualTokens` per modality given,
    and names the argument that carries each modality in `modality_inputs`.
    """

    modality_inputs: dict[str, str] = {"image": "pixel_values"}  # modality -> its forward argument

    def reduction_settings(self, reduction: ReductionSettings | None = None) -> ReductionSettings:
        """The settings of one call: `reduction` when given, else the config's."""
        return reduction if reduction is not None else self.config.reduction_settings

    def visual_tokens(
        self, reduction: ReductionSettings | None = None, **visual_inputs
    ) -> list[VisualTokens]:
        raise NotImplementedError(f"{type(self).__name__} must implement visual_tokens")

    def placeholder_masks(
        self,
        visual: list[VisualTokens],
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Per modality, where its placeholders are: from `input_ids`, else by comparing `inputs_embeds`
        with the placeholder token's embedding (as stock transformers 5.x does)."""
        masks = {}
        for tokens in visual:
            if input_ids is not None:
                masks[tokens.modality] = input_ids == tokens.token_id
            else:
                token = torch.full((), tokens.token_id, dtype=torch.long, device=inputs_embeds.device)
                masks[tokens.modality] = (inputs_embeds == self.get_input_embeddings()(token)).all(-1)
        return masks

    def compact_inputs(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        *,
        visual: list[VisualTokens],
        inputs_embeds: torch.Tensor | None = None,
        padding_side: str | None = None,
    ) -> CompactedBatch:
        """The batch the language model sees: each placeholder run replaced by its item's reduced tokens.

        `visual` comes from `visual_tokens` (or is built from tokens already reduced, as `bench` does).
        `padding_side` defaults to the side the input was padded on, and to the right without padding.
        """
        if input_ids is None:
            raise VisualInputError(
                "visual inputs need input_ids (with their placeholders), not inputs_embeds"
            )
        if input_ids.shape[0] == 0:
            raise VisualInputError("Empty batch: input_ids has no samples")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        pad_token_id = self.config.text_config.pad_token_id
        return compact_batch(
            text_embeds,
            attention_mask,
            visual,
            self.placeholder_masks(visual, input_ids, inputs_embeds),
            input_ids=input_ids,
            labels=labels,
            padding_side=padding_side,
            pad_token_id=0 if pad_token_id is None else pad_token_id,
        )

    def check_prefill(self, inputs_embeds, cache, kwargs: dict) -> None:
        """Compaction rewrites the whole prompt, so it needs the prompt as ids and an empty cache."""
        if inputs_embeds is not None:
            raise VisualInputError(
                "Pass input_ids (with `<image>` placeholders) together with pixel_values, not inputs_embeds"
            )
        if cache is not None and cache.get_seq_length() > 0:
            raise VisualInputError(
                "pixel_values with a non-empty KV cache (past_key_values) is not supported: the prompt is "
                "compacted as a whole; start from an empty cache"
            )
        kwargs.pop("cache_position", None)  # positions of the uncompacted prompt; the LLM recomputes them

    def check_text_only(self, input_ids, cache, kwargs: dict) -> None:
        """Placeholders without visual inputs would silently reach the LLM as ordinary tokens."""
        starting = cache is None or cache.get_seq_length() == 0
        if input_ids is None or not starting or kwargs.get("mm_encoder_outputs") is not None:
            return
        for modality, argument in self.modality_inputs.items():
            if (input_ids == getattr(self.config, f"{modality}_token_id")).any():
                raise VisualInputError(f"The prompt holds `<{modality}>` tokens but no {argument} were given")

    def language_model_outputs(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        cache,
        inputs_embeds: torch.Tensor | None,
        labels: torch.LongTensor | None,
        visual: list[VisualTokens] | None,
        **kwargs,
    ) -> dict:
        """The fields of the base model's output: the language model on the compacted prompt (or on the
        prompt as given, without visual inputs), the compacted mask, positions and labels, and per item
        the tokens that reached the language model."""
        fields = {"labels": labels}
        if visual is None:
            self.check_text_only(input_ids, cache, kwargs)
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
        else:
            compact = self.compact_inputs(input_ids, attention_mask, labels, visual=visual)
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
            for tokens in visual:
                fields.update(encoder_output_fields(tokens.modality, tokens.features))
            images = next((tokens for tokens in visual if tokens.modality == "image"), None)
            if images is not None:
                fields.update(visual_token_counts=images.counts, visual_token_centers=images.centers)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{CACHE_ARGUMENT: cache},
            **kwargs,
        )
        return {**outputs, **fields}


class PruMergeForConditionalGenerationMixin:
    """The head's part: `lm_head` and the loss on what the base model returns; `generate` on the compacted prompt.

    A subclass (listed first among the bases) names the keyword arguments that carry visual inputs
    in `visual_input_names`.
    """

    visual_input_names: tuple[str, ...] = ("pixel_values",)

    def reduce_image_tokens(self, pixel_values: torch.Tensor, **kwargs):
        """Per image, the reduced tokens (before the projector) and the patches they came from."""
        return self.model.reduce_image_tokens(pixel_values, **kwargs)

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

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """Overridden: with visual inputs, the prompt is compacted (left-padded) once, then decoded from its
        embeddings; the returned sequences start with the compacted prompt."""
        visual_inputs = {name: kwargs.pop(name, None) for name in self.visual_input_names}
        reduction = kwargs.pop("reduction", None)
        if all(value is None for value in visual_inputs.values()):
            return super().generate(inputs, generation_config, **kwargs)
        input_ids = kwargs.pop("input_ids", None)
        if inputs is not None and input_ids is not None:
            raise VisualInputError("Pass the prompt once: either as `inputs` or as `input_ids`")
        visual = self.model.visual_tokens(
            reduction=reduction,
            vision_feature_layer=kwargs.pop("vision_feature_layer", None),
            vision_feature_select_strategy=kwargs.pop("vision_feature_select_strategy", None),
            **visual_inputs,
        )
        compact = self.model.compact_inputs(
            input_ids if input_ids is not None else inputs,
            kwargs.pop("attention_mask", None),
            visual=visual,
            padding_side="left",
        )
        return super().generate(
            input_ids=compact.input_ids,
            inputs_embeds=compact.inputs_embeds,
            attention_mask=compact.attention_mask,
            generation_config=generation_config,
            **kwargs,
        )
