# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""The processor of LLaVA PruMerge checkpoints with a fixed visual-token budget.

Stock LLaVA's processor writes one `<image>` placeholder per patch (576 for LLaVA-1.5), which the
PruMerge model compacts to the image's reduced tokens. With a fixed budget the reduced count is
known before the vision tower runs, so this processor writes exactly that many: the prompt is as
long as what the language model sees, and the same as vLLM's (which sizes placeholder runs before
encoding). The model reads either form. Imports only transformers: it travels in Hub folders as
remote code.
"""

from transformers import LlavaProcessor


class LlavaPruMergeProcessor(LlavaProcessor):
    """[`LlavaProcessor`] that expands each `<image>` to `num_image_tokens` placeholders.

    Modifications: `num_image_tokens` (the checkpoint's fixed budget, written by `llava-prumerge export`),
    and `replace_image_token`, transformers 5's per-image expansion hook. transformers 4.57's
    `LlavaProcessor` has no such hook and expands `<image>` per patch, as stock.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        num_additional_image_tokens=0,
        num_image_tokens=None,
        **kwargs,
    ):
        """num_image_tokens: the placeholders per image, i.e. the tokens the language model sees for it."""
        self.num_image_tokens = num_image_tokens
        super().__init__(
            image_processor, tokenizer, patch_size, vision_feature_select_strategy, chat_template, image_token,
            num_additional_image_tokens, **kwargs,
        )  # fmt: skip

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """Overridden: the budget's worth of placeholders, whatever the image's size."""
        if self.num_image_tokens is None:
            return super().replace_image_token(image_inputs, image_idx, **kwargs)
        return self.image_token * self.num_image_tokens


__all__ = ["LlavaPruMergeProcessor"]
