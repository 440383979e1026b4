"""Tiny configs, models and inputs for tests, in the manner of transformers' `ModelTester` classes.

One tester per architecture builds config variants (the reduction methods a test should cover), the
PruMerge model and its stock twin with the same weights, and processed inputs from images made in
code. Tests parametrize over `REDUCTION_VARIANTS` instead of writing their configs by hand.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, BatchFeature, LlavaForConditionalGeneration

from ..modeling.reduction_settings import REDUCTION_FIELDS
from ..modeling.runtime_compat import VIDEO_LLAVA_IMAGES_ARGUMENT, image_text_auto_classes
from .tiny import TINY_IMAGE_SIZE, tiny_config, tiny_model, tiny_processor, tiny_tokenizer
from .tiny_video import (
    TINY_PATCHES,
    make_clip,
    tiny_video_config,
    tiny_video_image_processor,
    tiny_video_model,
    tiny_video_tokenizer,
)

PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
LONG_PROMPT = "USER: <image>\nDescribe the picture in detail, with the colors. ASSISTANT:"
# Reduction settings every model-level behavior is checked under: stock-equivalent, the two methods,
# and a fixed budget (the form vLLM serves).
REDUCTION_VARIANTS = {
    "none": {"token_reduction": "none"},
    "prumerge": {"token_reduction": "prumerge"},
    "prumerge_plus": {"token_reduction": "prumerge_plus"},
    "prumerge_plus_fixed_16": {
        "token_reduction": "prumerge_plus",
        "adaptive": False,
        "num_visual_tokens": 16,
    },
}


def visible_log_probs(model, inputs) -> torch.Tensor:
    """[visible positions, vocab]: the log-probabilities two paths of one model must agree on (padding aside)."""
    with torch.no_grad():
        out = model(**inputs)
    return out.logits[out.attention_mask.bool()].float().log_softmax(-1)


def assert_offload_half_precision_and_peft(model, batch: dict, folder) -> None:
    """What users run an AnyRes model with (LLaVA-NeXT, LLaVA-OneVision), on `batch`: an accelerate device map
    with the vision tower offloaded to disk generates as the model does; bfloat16 stays finite; a LoRA on
    the language model trains (finite loss, gradients) and merges back into the model's class."""
    import pytest  # here: the commands that use this module's fixtures run without pytest

    model.save_pretrained(folder / "model")
    device_map = {"model.vision_tower": "disk", "model.multi_modal_projector": "cpu", "model.image_newline": "cpu",
                  "model.language_model": "cpu", "lm_head": "cpu"}  # fmt: skip
    offloaded = type(model).from_pretrained(
        folder / "model", device_map=device_map, offload_folder=str(folder / "offload")
    )
    expected = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.equal(offloaded.generate(**batch, max_new_tokens=3, do_sample=False), expected)

    half = copy.deepcopy(model).to(torch.bfloat16)
    pixels = {
        name: value.to(torch.bfloat16) for name, value in batch.items() if name.startswith("pixel_values")
    }
    with torch.no_grad():
        assert torch.isfinite(half(**{**batch, **pixels}).logits).all()

    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = peft.get_peft_model(copy.deepcopy(model), lora)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = peft_model(**batch, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert type(peft_model.merge_and_unload()) is type(model)


def assert_lora_trains_and_merges(model, batch: dict, steps: int = 6) -> None:
    """A LoRA on the language model's q/v trains on `batch` (its loss falls in `steps` AdamW steps) and merges
    back into the model's class with the adapter's logits (PEFT's recipe on the reduced prompt)."""
    import pytest  # here: the commands that use this module's fixtures run without pytest

    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = peft.get_peft_model(model, lora)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = peft_model(**batch, labels=labels)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses
    peft_model.eval()
    with torch.no_grad():
        adapter_logits = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        assert type(merged) is type(model)
        torch.testing.assert_close(merged(**batch).logits, adapter_logits, rtol=1e-4, atol=1e-4)


def kept_patches(centers: torch.Tensor) -> list[torch.Tensor]:
    """The per-item kept patches of a batch-first `visual_token_centers` / `video_token_centers` output field
    ([batch, items, tokens] or [..., 2]; -1 pads), items in prompt order, sample after sample."""
    real = centers >= 0 if centers.dim() == 3 else (centers >= 0).all(-1)  # [batch, items, tokens]
    return [
        item[keep]
        for sample, sample_keep in zip(centers, real, strict=True)
        for item, keep in zip(sample, sample_keep, strict=True)
        if keep.any()
    ]


def make_image(seed: int, width: int = TINY_IMAGE_SIZE, height: int = TINY_IMAGE_SIZE) -> Image.Image:
    """A random dark image with a few bright blocks, so that images differ in where attention goes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    for _ in range(1 + seed % 4):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        pixels[y : y + 8, x : x + 8] = rng.integers(150, 255, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


class LlavaPruMergeModelTester:
    """The tiny LLaVA-1.5-shaped PruMerge model (CLIP 14x14 patches, 2-layer Llama) and its inputs."""

    def __init__(self):
        self.tokenizer = tiny_tokenizer()
        self.processor = tiny_processor(self.tokenizer)

    def get_config(self, **reduction_fields):
        return tiny_config(self.tokenizer, **reduction_fields)

    def get_model(self, seed: int = 0, **reduction_fields):
        """The PruMerge model, random weights from `seed`, eval mode."""
        return tiny_model(seed, self.tokenizer, **reduction_fields)

    def get_stock_model(self, seed: int = 0) -> LlavaForConditionalGeneration:
        """Stock LLaVA with the same shapes and, for the same seed, the same weights as `get_model`."""
        return stock_llava(self.get_config(), seed)

    def images(self, count: int, first_seed: int = 0) -> list[Image.Image]:
        return [make_image(seed) for seed in range(first_seed, first_seed + count)]

    def prepare_inputs(self, images, texts):
        return prepare_inputs(self.processor, images, texts)


def prepare_inputs(processor, images, texts):
    """The processor's output for `texts` (one `<image>` per image), padded on the tokenizer's side."""
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def stock_llava(config, seed: int = 0) -> LlavaForConditionalGeneration:
    """The stock LLaVA twin of a PruMerge `config` (its reducer fields dropped), random weights from `seed`."""
    return stock_twin(config, seed)


def stock_twin(config, seed: int = 0):
    """The stock model of a PruMerge `config` (its reducer fields dropped), random weights from `seed`."""
    values = {key: value for key, value in config.to_dict().items() if key not in REDUCTION_FIELDS}
    values.pop("model_type")
    stock_config = AutoConfig.for_model(config.stock_model_type, **values)
    # transformers 4.57 maps Video-LLaVA in AutoModelForVision2Seq only
    auto_class = next(auto for auto in image_text_auto_classes() if type(stock_config) in auto._model_mapping)
    torch.manual_seed(seed)
    return auto_class.from_config(stock_config).eval()


class VideoLlavaPruMergeModelTester:
    """The tiny Video-LLaVA-shaped PruMerge model (CLIP towers, 8-frame videos, 2-layer Llama) and its inputs.

    Inputs are built as `VideoLlavaProcessor` builds them (each `<image>` expanded to the image's patch
    tokens, each `<video>` to its frames' [CLS] and patch tokens), with the image processor for
    frames too: the video processor needs torchvision, which the main test environments lack.
    """

    def __init__(self):
        self.tokenizer = tiny_video_tokenizer()
        self.image_processor = tiny_video_image_processor()

    def get_config(self, **reduction_fields):
        return tiny_video_config(self.tokenizer, **reduction_fields)

    def get_model(self, seed: int = 0, **reduction_fields):
        """The PruMerge model, random weights from `seed`, eval mode."""
        return tiny_video_model(seed, self.tokenizer, **reduction_fields)

    def get_stock_model(self, seed: int = 0):
        """Stock Video-LLaVA with the same shapes and, for the same seed, the same weights as `get_model`."""
        return stock_twin(self.get_config(), seed)

    def images(self, count: int, first_seed: int = 0) -> list[Image.Image]:
        return [make_image(seed) for seed in range(first_seed, first_seed + count)]

    def clips(self, count: int, first_seed: int = 0, frames: int | None = None) -> list[list[Image.Image]]:
        return [
            make_clip(seed, **({"frames": frames} if frames else {}))
            for seed in range(first_seed, first_seed + count)
        ]

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=images, return_tensors="pt")["pixel_values_images"]

    def prepare_inputs(self, texts: list[str], images=None, videos=None) -> BatchFeature:
        """Tokenized `texts` (left-padded) with their placeholders expanded, and the pixel values."""
        frames = len(videos[0]) if videos else 0
        expanded = [
            text.replace("<image>", "<image>" * TINY_PATCHES).replace("<video>", "<video>" * (frames * (TINY_PATCHES + 1)))
            for text in texts
        ]  # fmt: skip
        inputs = dict(self.tokenizer(expanded, return_tensors="pt", padding=True))
        if images:
            inputs[VIDEO_LLAVA_IMAGES_ARGUMENT] = self.pixels(images)
        if videos:
            inputs["pixel_values_videos"] = torch.stack([self.pixels(clip) for clip in videos])
        return BatchFeature(inputs)
