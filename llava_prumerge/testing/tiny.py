"""A tiny LLaVA-1.5-shaped PruMerge model, tokenizer and processor, built locally with random weights.

Same family as llava-1.5-7b (CLIP vision tower, layer -2 features, 2-layer GELU projector, Llama
LLM, `<image>` token, the vicuna_v1 chat template) at a size that runs in milliseconds on a CPU.
Used by the tests, the demo and `llava-prumerge export --tiny`; nothing is downloaded.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlavaProcessor, PreTrainedTokenizerFast

from ..common.conversation import VICUNA_CHAT_TEMPLATE
from ..configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from ..modeling.modeling_llava_prumerge import LlavaPruMergeForConditionalGeneration

_CORPUS = [
    "USER: What is shown in this image? ASSISTANT: A photo of a cat sitting on a red sofa.",
    "USER: Describe the picture in detail. ASSISTANT: The scene shows a busy street with cars, people and signs.",
    "USER: How many dogs are there? ASSISTANT: There are two dogs playing in the green grass.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The quick brown fox jumps over the lazy dog. 0123456789 sky blue text page",
]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

TINY_IMAGE_SIZE = 56
TINY_PATCH_SIZE = 4  # 14 x 14 = 196 patches
TINY_TEXT_HEADS = 2  # head size 32: vLLM's CPU attention takes only multiples of 32, so vLLM serves them


def byte_level_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int) -> Tokenizer:
    """A small byte-level BPE tokenizer trained in code on `corpus` (so that decoding gives text back)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in code, with LLaVA's special tokens."""
    return llava_fast_tokenizer(byte_level_bpe(_CORPUS, SPECIAL_TOKENS, vocab_size=400))


def llava_fast_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` as llava-hf's tokenizers are set up: Llama's special tokens, left padding,
    no token_type_ids, the vicuna_v1 chat template, and `<image>` as a special token."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        chat_template=VICUNA_CHAT_TEMPLATE,
    )
    wrapped.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return wrapped


def tiny_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    """`LlavaProcessor` + `LlavaImageProcessor` padding images to a square with the mean color, as LLaVA-1.5."""
    from transformers import LlavaImageProcessor

    image_processor = LlavaImageProcessor(
        do_pad=True,
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or tiny_tokenizer(),
        patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )


TINY_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH_SIZE,
    "projection_dim": 32,
    # A wider initialization gives the random tower a peaked [CLS] attention, as a trained CLIP
    # has, so PruMerge keeps a few percent of the patches and the count varies per image.
    "initializer_factor": 3.0,
}


def tiny_siglip_vision_config() -> dict:
    """A tiny SigLIP tower (no [CLS] token, no pre-norm: LLaVA-OneVision's kind), the CLIP tower's shapes."""
    shape = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
    )
    return {"model_type": "siglip_vision_model", **{name: TINY_VISION_CONFIG[name] for name in shape}}


def tiny_config(tokenizer: PreTrainedTokenizerFast | None = None, **reduction_fields) -> LlavaPruMergeConfig:
    """The tiny model's config (its text head size, 32, is one vLLM's CPU build serves)."""
    tokenizer = tokenizer or tiny_tokenizer()
    vision_config = dict(TINY_VISION_CONFIG)
    text_config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": TINY_TEXT_HEADS,
        "num_key_value_heads": TINY_TEXT_HEADS,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return LlavaPruMergeConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
        pad_token_id=tokenizer.pad_token_id,
        **reduction_fields,
    )


def tiny_model(
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **reduction_fields,
):
    """A random-weight `LlavaPruMergeForConditionalGeneration` (float32, eval mode)."""
    torch.manual_seed(seed)
    model = LlavaPruMergeForConditionalGeneration(tiny_config(tokenizer, **reduction_fields))
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model.eval()
