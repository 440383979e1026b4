"""LLaVA-PruMerge as a vLLM model: vLLM's LLaVA whose image features go through the package's reducer.

Imported only by vLLM (the plugin registers it by name). Modifications to vLLM's
`LlavaForConditionalGeneration` (vllm/model_executor/models/llava.py):
- `__init__`: refuses a config whose token count varies per image (see `budget`), and builds the
  CLIP layers up to the reduction layer (vLLM builds them up to the feature layer it reads).
- `_process_image_input`: pixels -> CLIP layers up to the deepest one needed -> the reduction layer's
  q/k (the q and k parts of vLLM's fused `qkv_proj`) -> [CLS] attention -> the reducer -> projector;
  one [budget, hidden] tensor per image.
- Its processing info sizes each image's placeholder run to that budget, so the scheduler reserves
  (and the KV cache holds) only the reduced tokens.
"""

from __future__ import annotations

import torch
from vllm.distributed import tensor_model_parallel_all_gather
from vllm.model_executor.layers.attention import MMEncoderAttention
from vllm.model_executor.models.clip import CLIPEncoderLayer, CLIPVisionModel
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.model_executor.models.utils import maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..modeling.token_reduction import patch_importance
from ..modeling.vision_encoding import EncodedPatches, _layer_indices
from .budget import image_token_count


class LlavaPruMergeProcessingInfo(LlavaProcessingInfo):
    """Overridden: every image gets the config's fixed token count, whatever its size."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return image_token_count(self.get_hf_config())


@MULTIMODAL_REGISTRY.register_processor(
    LlavaMultiModalProcessor, info=LlavaPruMergeProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class LlavaPruMergeForConditionalGeneration(LlavaForConditionalGeneration):
    """vLLM's LLaVA whose language model sees only the PruMerge-reduced visual tokens (a fixed budget)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        image_token_count(config)  # refuses an adaptive config before any weight is allocated
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.settings = config.reduction_settings
        self.feature_layers, self.reduction_layer = _layer_indices(
            config.vision_config.num_hidden_layers, config.vision_feature_layer, self.settings
        )
        if isinstance(self.vision_tower, CLIPVisionModel):  # not when images are disabled (limit 0)
            self._build_layers_through(self.deepest_layer, vllm_config.quant_config, prefix)

    @property
    def deepest_layer(self) -> int:
        """How many CLIP layers run: up to the deepest feature layer, and the reduction layer's input."""
        return max(self.feature_layers + ([self.reduction_layer] if self.settings.reduces else []))

    def _build_layers_through(self, layer_index: int, quant_config, prefix: str) -> None:
        """Add vLLM CLIP layers up to `layer_index` (the reduction layer, whose q/k are read); the weight
        loader fills them as the others, since it loads every layer the encoder has."""
        layers = self.vision_tower.vision_model.encoder.layers
        layers_prefix = maybe_prefix(prefix, "vision_tower.vision_model.encoder.layers")
        for index in range(len(layers), layer_index + 1):
            layers.append(
                CLIPEncoderLayer(
                    self.config.vision_config,
                    quant_config=quant_config,
                    prefix=f"{layers_prefix}.{index}",
                    attn_cls=MMEncoderAttention,
                )
            )

    def _process_image_input(self, image_input):
        """Overridden for pixel inputs: the reduced, projected tokens, one [budget, hidden] tensor per image."""
        if image_input["type"] != "pixel_values":
            return super()._process_image_input(image_input)
        reduced = self._encode_patches(image_input["pixel_values"]).reduce(self.settings)
        projected = self.multi_modal_projector(torch.cat(reduced.features))  # [n * budget, hidden]
        return projected.split(reduced.num_tokens)

    def _encode_patches(self, pixel_values: torch.Tensor) -> EncodedPatches:
        """Patch features [n, N, C] of pixel_values [n, 3, H, W] and, when reducing, the reduction layer's
        patch importance [n, N] and patch keys [n, N, D], as `vision_encoding.encode_patches` on vLLM's CLIP."""
        transformer = self.vision_tower.vision_model
        hidden = transformer.pre_layrnorm(transformer.embeddings(pixel_values))  # [n, 1+N, D]
        hidden_states = [hidden]  # hidden_states[i]: the input of layer i
        for layer in transformer.encoder.layers[: self.deepest_layer]:
            hidden = layer(hidden)
            hidden_states.append(hidden)
        selected = torch.cat([hidden_states[i] for i in self.feature_layers], dim=-1)  # [n, 1+N, C]
        keep_class_token = self.config.vision_feature_select_strategy == "full"
        encoded = EncodedPatches(selected[:, 1:], selected[:, :1] if keep_class_token else None)
        if self.settings.reduces:
            layer = transformer.encoder.layers[self.reduction_layer]
            queries, keys = _queries_and_keys(layer, hidden_states[self.reduction_layer])
            encoded.attention = patch_importance(
                queries,
                keys,
                self.settings.importance,
                self.settings.class_attention,
                layer.self_attn.num_heads,
            )
            encoded.keys = keys[:, 1:]
        return encoded


def _queries_and_keys(layer: CLIPEncoderLayer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A vLLM CLIP layer's q and k projections [n, 1+N, D] of its input [n, 1+N, D], over all heads.

    vLLM fuses q/k/v into one `qkv_proj`; under tensor parallelism each rank holds its own heads'
    slice of each, so q and k are gathered across ranks (heads in rank order, as in the full weight).
    """
    qkv, _ = layer.self_attn.qkv_proj(layer.layer_norm1(hidden))  # [n, 1+N, 3 * D / tp]
    queries, keys, _ = qkv.chunk(3, dim=-1)
    if layer.self_attn.tp_size > 1:
        queries = tensor_model_parallel_all_gather(queries.contiguous(), dim=-1)
        keys = tensor_model_parallel_all_gather(keys.contiguous(), dim=-1)
    return queries, keys
