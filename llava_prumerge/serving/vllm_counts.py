"""How many placeholders vLLM writes for an item of a PruMerge folder: its budget (stock's count without
reduction), for the processing infos of every served family. Imported only by vLLM's side of the plugin."""

from __future__ import annotations

from .budget import image_token_count


class ImageBudgetInfoMixin:
    """Listed before a vLLM processing info: every image counted at the config's budget, whatever its size
    (stock's count with `token_reduction="none"`)."""

    def get_num_image_tokens(self, **kwargs) -> int:
        config = self.get_hf_config()
        if not config.reduction_settings.reduces:
            return super().get_num_image_tokens(**kwargs)
        return image_token_count(config)


def videos_served(vllm_config) -> bool:
    """Whether the engine takes videos (`limit_mm_per_prompt` does not set them to 0)."""
    multimodal = vllm_config.model_config.multimodal_config
    return multimodal is not None and multimodal.get_limit_per_prompt("video") > 0
