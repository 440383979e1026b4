"""LLaVA-PruMerge as a vLLM model: vLLM's LLaVA whose image features go through the package's reducer.

Imported only by vLLM (the plugin registers it by name). Modifications to vLLM's
`LlavaForConditionalGeneration` (vllm/model_executor/models/llava.py):
- `__init__`: refuses a config whose token count varies per image (see `budget`), and builds the
  CLIP layers up to the reduction layer (`vllm_vision.VisionPatches`).
- `_process_image_input`: pixels -> CLIP layers up to the deepest one needed -> the reduction layer's
  [CLS] attention and keys -> the reducer -> projector; one [budget, hidden] tensor per image.
- Its processing info sizes each image's placeholder run to that budget, so the scheduler reserves
  (and the KV cache holds) only the reduced tokens.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.model_executor.models.utils import maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from .budget import image_token_count
from .vllm_counts import ImageBudgetInfoMixin
from .vllm_vision import VisionPatches


class LlavaPruMergeProcessingInfo(ImageBudgetInfoMixin, LlavaProcessingInfo):
    """vLLM's LLaVA processing info counting every image at the config's budget."""


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
        if isinstance(self.vision_tower, CLIPVisionModel):  # not when images are disabled (limit 0)
            self.patches = VisionPatches(
                self.vision_tower, config, self.settings, vllm_config.quant_config,
                maybe_prefix(prefix, "vision_tower"),
            )  # fmt: skip

    def _process_image_input(self, image_input):
        """Overridden for pixel inputs: the reduced, projected tokens, one [budget, hidden] tensor per image."""
        if image_input["type"] != "pixel_values":
            return super()._process_image_input(image_input)
        reduced = self.patches.encode(image_input["pixel_values"]).reduce(self.settings)
        projected = self.multi_modal_projector(torch.cat(reduced.features))  # [n * budget, hidden]
        return projected.split(reduced.num_tokens)
