# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""The processors of Qwen2.5-VL and Qwen2-VL PruMerge checkpoints with a fixed visual-token budget.

Stock Qwen-VL processors write one `<|image_pad|>` per merged token of an image's native-resolution grid
(about 1200 for a 1280 x 720 image), which the PruMerge model compacts to the image's reduced tokens.
With a fixed budget (`num_visual_tokens`) every image larger than the budget reaches the language model
as the same number of tokens, so these processors write exactly that many: the prompt is as long as
what the language model sees (an image of exactly the budget's merged tokens keeps them all, as the model
does; the model refuses smaller ones). The model reads either form: it widens a budget's run to stock's to
place it by 3-D positions, then compacts. Videos expand as stock. Imports only transformers: they travel in
Hub folders as remote code.
"""

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor


class QwenVLBudgetMixin:
    """Listed before the stock Qwen-VL processor: `num_image_tokens` placeholders per image (at most the image's
    merged tokens), through transformers 5's per-image expansion hook, `replace_image_token`. transformers
    4.57's Qwen-VL processors have no such hook and expand per merged token, as stock."""

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None,
                 num_image_tokens=None, **kwargs):  # fmt: skip
        """num_image_tokens: the placeholders per image, i.e. the tokens the language model sees for it."""
        self.num_image_tokens = num_image_tokens
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """Overridden: the budget's worth of placeholders, or the image's merged tokens when it has fewer."""
        if self.num_image_tokens is None:
            return super().replace_image_token(image_inputs, image_idx, **kwargs)
        merged = int(image_inputs["image_grid_thw"][image_idx].prod()) // self.image_processor.merge_size**2
        return self.image_token * min(self.num_image_tokens, merged)


class Qwen2_5_VLPruMergeProcessor(QwenVLBudgetMixin, Qwen2_5_VLProcessor):
    """[`Qwen2_5_VLProcessor`] that expands each `<|image_pad|>` to the checkpoint's fixed budget."""


class Qwen2VLPruMergeProcessor(QwenVLBudgetMixin, Qwen2VLProcessor):
    """[`Qwen2VLProcessor`] that expands each `<|image_pad|>` to the checkpoint's fixed budget."""


__all__ = ["Qwen2_5_VLPruMergeProcessor", "Qwen2VLPruMergeProcessor"]
