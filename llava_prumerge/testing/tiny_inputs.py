"""Write tiny random-weight stand-ins for what `convert` and `export --from-hf` read (for tests and docs).

OUT/vicuna    a Llama causal LM and its tokenizer (no <image>, no pad token), as lmsys/vicuna-7b-v1.5
OUT/clip      a full CLIPModel checkpoint with openai's preprocessor_config.json, as openai/clip-vit-large-patch14-336
OUT/lora      an original LLaVA LoRA training output: config.json (LlavaLlamaForCausalLM), adapter_config.json,
              adapter_model.safetensors and non_lora_trainables.safetensors (LLaVA writes the last two as
              .bin pickles; this package writes safetensors only, and `convert` reads either)
OUT/llava-hf  a stock LlavaForConditionalGeneration and its processor, as llava-hf/llava-1.5-7b-hf
OUT/llava-next-hf  a stock LlavaNextForConditionalGeneration and its processor, as llava-hf/llava-v1.6-vicuna-7b-hf
OUT/video-llava-hf  a stock VideoLlavaForConditionalGeneration, its tokenizer and image processor, as
              LanguageBind/Video-LLaVA-7B-hf (whose frames take the image processor's transforms)
OUT/qwen2.5-vl-hf, OUT/qwen2-vl-hf  stock Qwen2.5-VL / Qwen2-VL models, their tokenizer and image processor, as
              Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen2-VL-7B-Instruct (their processors need torchvision)
OUT/llava-onevision-hf  a stock LlavaOnevisionForConditionalGeneration, its tokenizer, image processor and
              processor settings, as llava-hf/llava-onevision-qwen2-7b-ov-hf (the processor itself needs
              torchvision to build)

Shapes follow llava_prumerge.tiny; files are saved by the installed transformers. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..common.conversation import VICUNA_CHAT_TEMPLATE
from ..modeling.reduction_settings import REDUCTION_FIELDS
from .model_tester import stock_twin
from .tiny import (
    TINY_IMAGE_SIZE,
    TINY_PATCH_SIZE,
    TINY_TEXT_HEADS,
    byte_level_bpe,
    tiny_config,
    tiny_tokenizer,
)
from .tiny_next import tiny_next_config, tiny_next_processor
from .tiny_onevision import tiny_onevision_config, tiny_onevision_parts
from .tiny_qwen import tiny_qwen_config, tiny_qwen_parts
from .tiny_video import tiny_video_config, tiny_video_image_processor, tiny_video_tokenizer

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_CORPUS = [
    "USER: What is in the picture? ASSISTANT: A small red boat on a calm blue lake.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
]


@dataclass
class TinyInputs:
    vicuna: Path
    clip: Path
    lora: Path
    llava_hf: Path
    llava_next_hf: Path
    video_llava_hf: Path
    llava_onevision_hf: Path
    qwen2_5_vl_hf: Path
    qwen2_vl_hf: Path


def _vicuna_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Llama's special tokens and BOS post-processor, without <image> or a pad token."""
    tokenizer = byte_level_bpe(_CORPUS, ["<unk>", "<s>", "</s>"], vocab_size=300)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )


def _write_vicuna(folder: Path) -> LlamaForCausalLM:
    tokenizer = _vicuna_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=TINY_TEXT_HEADS, num_key_value_heads=TINY_TEXT_HEADS, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    llama = LlamaForCausalLM(config).eval()
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return llama


def _write_clip(folder: Path) -> dict:
    vision_config = tiny_config().vision_config.to_dict()
    text_config = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
    }  # fmt: skip
    clip = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32))
    clip.save_pretrained(folder)
    openai_preprocessor = {
        "crop_size": TINY_IMAGE_SIZE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD, "resample": 3, "size": TINY_IMAGE_SIZE,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(
        json.dumps(openai_preprocessor, indent=2), encoding="utf-8"
    )
    return vision_config


def _write_lora(folder: Path, llama: LlamaForCausalLM, vision_hidden: int, vicuna: Path, clip: Path) -> None:
    """The files LLaVA's LoRA training writes, with random LoRA A and B (so the adapter changes the outputs)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    config = llama.config.to_dict()
    folder.mkdir(parents=True)
    lora_config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
        target_modules=LORA_TARGETS, init_lora_weights=False,
    )  # fmt: skip
    peft_model = get_peft_model(llama, lora_config)
    adapter = {name: tensor.contiguous() for name, tensor in get_peft_model_state_dict(peft_model).items()}
    save_file(adapter, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(folder)

    hidden = config["hidden_size"]
    projector = [torch.nn.Linear(vision_hidden, hidden), torch.nn.Linear(hidden, hidden)]
    non_lora = {
        f"base_model.model.model.mm_projector.{index}.{name}": tensor.detach().contiguous()
        for index, layer in zip((0, 2), projector, strict=True)
        for name, tensor in layer.named_parameters()
    }
    save_file(non_lora, folder / "non_lora_trainables.safetensors", metadata={"format": "pt"})
    config.update(
        _name_or_path=str(vicuna.resolve()), architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama",
        mm_vision_tower=str(clip.resolve()), mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_hidden_size=vision_hidden, image_aspect_ratio="pad",
        mm_use_im_start_end=False, mm_use_im_patch_token=False, mm_patch_merge_type="flat",
        tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, use_mm_proj=True,
        tokenizer_model_max_length=2048, tokenizer_padding_side="right",
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_llava_hf(folder: Path) -> None:
    tokenizer = tiny_tokenizer()
    values = {
        key: value
        for key, value in tiny_config(tokenizer).to_dict().items()
        if key not in REDUCTION_FIELDS and key != "model_type"
    }
    LlavaForConditionalGeneration(LlavaConfig(**values)).save_pretrained(folder)
    size = TINY_IMAGE_SIZE
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
        patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)


def _write_llava_next_hf(folder: Path) -> None:
    tokenizer = tiny_tokenizer()
    stock_twin(tiny_next_config(tokenizer)).save_pretrained(folder)
    tiny_next_processor(tokenizer).save_pretrained(folder)


def _write_video_llava_hf(folder: Path) -> None:
    tokenizer = tiny_video_tokenizer()
    stock_twin(tiny_video_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_video_image_processor().save_pretrained(folder)


def _write_llava_onevision_hf(folder: Path) -> None:
    parts = tiny_onevision_parts()
    stock_twin(tiny_onevision_config(parts.tokenizer)).save_pretrained(folder)
    parts.tokenizer.save_pretrained(folder)
    parts.image_processor.save_pretrained(folder)
    settings = {
        "processor_class": "LlavaOnevisionProcessor", "image_token": parts.image_token,
        "video_token": parts.video_token, "num_image_tokens": parts.num_image_tokens,
        "vision_aspect_ratio": parts.vision_aspect_ratio,
        "vision_feature_select_strategy": parts.vision_feature_select_strategy,
    }  # fmt: skip
    (folder / "processor_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


def _write_qwen_vl_hf(folder: Path, arch: str) -> None:
    parts = tiny_qwen_parts()
    stock_twin(tiny_qwen_config(arch, parts.tokenizer)).save_pretrained(folder)
    parts.tokenizer.save_pretrained(folder)
    parts.image_processor.save_pretrained(folder)


def tiny_input_paths(root: str | Path) -> TinyInputs:
    root = Path(root)
    return TinyInputs(
        root / "vicuna",
        root / "clip",
        root / "lora",
        root / "llava-hf",
        root / "llava-next-hf",
        root / "video-llava-hf",
        root / "llava-onevision-hf",
        root / "qwen2.5-vl-hf",
        root / "qwen2-vl-hf",
    )


def write_tiny_inputs(root: str | Path, *, seed: int = 0, final_root: str | Path | None = None) -> TinyInputs:
    """Write the stand-ins under `root`; `final_root` is where they will live when `root` is a staging
    folder renamed into place afterwards (the LoRA config records the base model's and tower's paths)."""
    inputs = tiny_input_paths(root)
    final = tiny_input_paths(final_root or root)
    torch.manual_seed(seed)
    llama = _write_vicuna(inputs.vicuna)
    vision_config = _write_clip(inputs.clip)
    _write_lora(inputs.lora, llama, vision_config["hidden_size"], final.vicuna, final.clip)
    _write_llava_hf(inputs.llava_hf)
    _write_llava_next_hf(inputs.llava_next_hf)
    _write_video_llava_hf(inputs.video_llava_hf)
    _write_llava_onevision_hf(inputs.llava_onevision_hf)
    _write_qwen_vl_hf(inputs.qwen2_5_vl_hf, "qwen2.5-vl")
    _write_qwen_vl_hf(inputs.qwen2_vl_hf, "qwen2-vl")
    return inputs
