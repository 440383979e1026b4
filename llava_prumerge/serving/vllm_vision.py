"""PruMerge's encode stage on vLLM's CLIP and SigLIP towers: patch features, and the reduction layer's scores.

Imported only by vLLM (through the models the plugin registers). vLLM builds a LLaVA-family tower up to
the deepest feature layer the model reads, and fuses each layer's q/k/v into one `qkv_proj` split over
tensor-parallel ranks; this module adds the layers the reducer needs and reads its q/k from there, so
that the package's reducer gets what `vision_encoding.encode_patches` gives it in transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.distributed import tensor_model_parallel_all_gather
from vllm.model_executor.layers.attention import MMEncoderAttention
from vllm.model_executor.models.clip import CLIPEncoderLayer, CLIPVisionModel
from vllm.model_executor.models.siglip import SiglipEncoderLayer, SiglipVisionModel
from vllm.model_executor.models.utils import maybe_prefix

from ..modeling.reduction_settings import ReductionSettings
from ..modeling.token_reduction import patch_importance
from ..modeling.vision_encoding import EncodedPatches, _layer_indices

LAYER_CLASSES = {CLIPVisionModel: CLIPEncoderLayer, SiglipVisionModel: SiglipEncoderLayer}


class VisionPatches:
    """A vLLM LLaVA-family tower read as PruMerge reads it: the feature layer(s) and the reduction layer."""

    def __init__(self, tower: nn.Module, config, settings: ReductionSettings, quant_config, prefix: str):
        """Adds to `tower` (vLLM's, at `prefix`) the layers up to the reduction layer, which vLLM leaves out when
        it is deeper than the feature layers; the weight loader fills them as the others."""
        self.tower, self.settings = tower, settings
        self.class_token = isinstance(tower, CLIPVisionModel)  # SigLIP has no [CLS] row
        self.keep_class_token = config.vision_feature_select_strategy == "full"
        self.feature_layers, self.reduction_layer = _layer_indices(
            config.vision_config.num_hidden_layers, config.vision_feature_layer, settings
        )
        # hidden_states[i] is the input of layer i: layers [0, deepest) run, and the reduction layer is read
        self.deepest = max(self.feature_layers + ([self.reduction_layer] if settings.reduces else []))
        built = max(self.deepest, self.reduction_layer + 1 if settings.reduces else 0)
        layers = tower.vision_model.encoder.layers
        layer_class = LAYER_CLASSES[type(tower)]
        layers_prefix = maybe_prefix(prefix, "vision_model.encoder.layers")
        for index in range(len(layers), built):
            layers.append(
                layer_class(
                    config.vision_config,
                    quant_config=quant_config,
                    prefix=f"{layers_prefix}.{index}",
                    attn_cls=MMEncoderAttention,
                )
            )

    def encode(self, pixel_values: torch.Tensor) -> EncodedPatches:
        """Patch features [n, N, C] of pixel_values [n, 3, H, W] and, when reducing, the reduction layer's patch
        importance [n, N] and patch keys [n, N, D], as `vision_encoding.encode_patches` on transformers' tower."""
        transformer = self.tower.vision_model
        hidden = transformer.embeddings(pixel_values)  # [n, (1+)N, D]
        if hasattr(transformer, "pre_layrnorm"):  # CLIP's; SigLIP has none
            hidden = transformer.pre_layrnorm(hidden)
        hidden_states = [hidden]  # hidden_states[i]: the input of layer i
        for layer in transformer.encoder.layers[: self.deepest]:
            output = layer(hidden)
            hidden = output[0] if isinstance(output, tuple) else output  # SigLIP's layers return a pair
            hidden_states.append(hidden)
        selected = torch.cat([hidden_states[i] for i in self.feature_layers], dim=-1)  # [n, (1+)N, C]
        patches = slice(1, None) if self.class_token or not self.keep_class_token else slice(None)
        class_features = selected[:, :1] if self.keep_class_token and self.class_token else None
        encoded = EncodedPatches(selected[:, patches], class_features)
        if self.settings.reduces:
            layer = transformer.encoder.layers[self.reduction_layer]
            queries, keys = queries_and_keys(layer, hidden_states[self.reduction_layer])
            scored = slice(None) if self.class_token else patches  # the [CLS] row scores its patches
            encoded.attention = patch_importance(
                queries[:, scored],
                keys[:, scored],
                self.settings.importance,
                self.settings.class_attention,
                layer.self_attn.num_heads,
                self.class_token,
            )
            encoded.keys = keys[:, patches]
        return encoded


def queries_and_keys(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A vLLM CLIP or SigLIP layer's q and k projections [n, L, D] of its input [n, L, D], over all heads.

    vLLM fuses q/k/v into one `qkv_proj`; under tensor parallelism each rank holds its own heads'
    slice of each, so q and k are gathered across ranks (heads in rank order, as in the full weight).
    """
    qkv, _ = layer.self_attn.qkv_proj(layer.layer_norm1(hidden))  # [n, L, 3 * D / tp]
    queries, keys, _ = qkv.chunk(3, dim=-1)
    if layer.self_attn.tp_size > 1:
        queries = tensor_model_parallel_all_gather(queries.contiguous(), dim=-1)
        keys = tensor_model_parallel_all_gather(keys.contiguous(), dim=-1)
    return queries, keys
