"""The models and inputs `llava-prumerge bench` measures: random-weight architectures or a checkpoint,
synthetic images or videos and the prompt a stock processor would produce."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, PretrainedConfig

from ..common.loading import load_prumerge_model
from ..configuration.configuration_llava_next_prumerge import LlavaNextPruMergeConfig
from ..configuration.configuration_llava_onevision_prumerge import LlavaOnevisionPruMergeConfig
from ..configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from ..configuration.configuration_qwen2_5_vl_prumerge import Qwen2_5_VLPruMergeConfig
from ..configuration.configuration_video_llava_prumerge import VideoLlavaPruMergeConfig
from ..errors import UsageError
from ..modeling.modeling_llava_prumerge import LlavaPruMergeForConditionalGeneration
from ..testing.tiny import SPECIAL_TOKENS as TINY_SPECIAL_TOKENS
from ..testing.tiny import tiny_config
from ..testing.tiny_next import tiny_next_config
from ..testing.tiny_onevision import tiny_onevision_config
from ..testing.tiny_qwen import tiny_qwen_config
from ..testing.tiny_video import tiny_video_config
from .modalities import VisualPath, visual_path
from .roofline import ARCHITECTURES, QWEN_IMAGE_SIZES, Architecture

# A random CLIP has a near-uniform [CLS] attention. A wider initialization makes it peaked, as a
# trained CLIP's is; 13 was tuned on this benchmark's synthetic images so that PruMerge keeps about
# 33 tokens per image (the paper: 32 on average, 5.5%, plus the summary token).
PEAKED_ATTENTION_INIT = 13.0
CLIP_VIT_L_14_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "initializer_factor": PEAKED_ATTENTION_INIT,
}
CLIP_VIT_L_14_224 = {**CLIP_VIT_L_14_336, "image_size": 224}  # Video-LLaVA's image and video towers
# LLaVA-OneVision's tower (google/siglip-so400m-patch14-384 without its pooling head): no [CLS] token, so the
# random tower is scored by the stand-in (mean_attention) with transformers' own SigLIP initialization.
SIGLIP_SO400M_14_384 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
QWEN2_SPECIAL_TOKENS_START = 151643  # <|endoftext|>: Qwen2's special and placeholder ids follow
# llava-hf's LLaVA-1.5 adds <image> (id 32000) and <pad> (32001) to Llama's 32000 ids and pads to 32064.
LLAVA_HF_VOCAB_PADDING = 64
LLAMA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
# Fraction of the available memory the weights may take: activations and the KV cache need the rest.
WEIGHT_MEMORY_BUDGET = 0.8


@dataclass
class BenchSubject:
    """A model to benchmark with what is needed to make its inputs."""

    model: LlavaPruMergeForConditionalGeneration  # or a LLaVA-NeXT or Video-LLaVA one
    image_processor: object  # for images, or for the frames of videos
    visual: VisualPath  # images (ImagePath), AnyRes images (AnyresPath) or videos (VideoPath)
    arch: str | None  # a RANDOM_ARCHITECTURES name (random weights), or None
    checkpoint: str | None  # the --model folder or Hub id, or None
    llm_layers: int  # LLM layers built and timed
    full_depth_layers: int  # LLM layers of the real model
    bos_token_id: int | None
    text_token_ids: torch.Tensor  # ids the random text is drawn from (no special or image ids)


@dataclass
class BenchInputs:
    input_ids: torch.Tensor  # [B, L] bos, the image's (video's) expanded placeholders, text
    attention_mask: torch.Tensor
    # images [B, 3, H, W], AnyRes images [B, views, 3, H, W], or videos [B, F, 3, H, W]
    pixel_values: torch.Tensor


@dataclass
class RandomArchitecture:
    config: LlavaPruMergeConfig
    full_depth_layers: int  # LLM layers of the real model
    text_token_ids: torch.Tensor  # ordinary text ids: no special, image or vocabulary-padding ids


def llama_text_config(shape: Architecture, pad_token_id: int) -> dict:
    """Vicuna's LLM config at the shape's dimensions; the vocabulary padded as llava-hf pads it."""
    return {
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "vocab_size": shape.vocab_size + LLAVA_HF_VOCAB_PADDING,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "pad_token_id": pad_token_id,
    }


def llava_config(shape: Architecture) -> LlavaPruMergeConfig:
    """LLaVA-1.5: CLIP ViT-L/14-336, layer -2 features without [CLS], `<image>` (32000) and `<pad>` after
    Llama's ids."""
    return LlavaPruMergeConfig(
        vision_config=CLIP_VIT_L_14_336,
        text_config=llama_text_config(shape, shape.vocab_size + 1),
        image_token_index=shape.vocab_size,
        image_seq_length=(336 // 14) ** 2,
        pad_token_id=shape.vocab_size + 1,
    )


def video_llava_config(shape: Architecture) -> VideoLlavaPruMergeConfig:
    """Video-LLaVA: image and video towers CLIP ViT-L/14 at 224 px, layer -2 features (a frame's with its
    [CLS] row), a 2-layer GELU projector (VideoLlavaConfig's defaults), `<image>`, `<video>` and `<pad>`
    after Llama's ids; the video placeholders of `shape.prompt` (8 frames x 257)."""
    return VideoLlavaPruMergeConfig(
        vision_config=CLIP_VIT_L_14_224,
        text_config=llama_text_config(shape, shape.vocab_size + 2),
        image_token_index=shape.vocab_size,
        video_token_index=shape.vocab_size + 1,
        image_seq_length=(224 // 14) ** 2,
        video_seq_length=shape.prompt.stock_tokens,
        pad_token_id=shape.vocab_size + 2,
    )


def llava_next_config(shape: Architecture) -> LlavaNextPruMergeConfig:
    """LLaVA-NeXT (llava-hf/llava-v1.6-vicuna-7b-hf): LLaVA-1.5's tower, projector and LLM, AnyRes over the
    shape's grid resolutions (llava-v1.6's), `<image>` (32000) and `<pad>` after Llama's ids."""
    return LlavaNextPruMergeConfig(
        vision_config=CLIP_VIT_L_14_336,
        text_config=llama_text_config(shape, shape.vocab_size + 1),
        image_token_index=shape.vocab_size,
        image_grid_pinpoints=[list(resolution) for resolution in shape.prompt.anyres.grid_pinpoints],
        image_seq_length=(336 // 14) ** 2,
        pad_token_id=shape.vocab_size + 1,
    )


def llava_onevision_config(shape: Architecture) -> LlavaOnevisionPruMergeConfig:
    """LLaVA-OneVision (llava-hf/llava-onevision-qwen2-7b-ov-hf): SigLIP so400m at 384 px, every row of the
    last layer ("full", -1), AnyRes up to 6 x 6 crops with anyres_max_9, a Qwen2 LLM; `<image>` (151646),
    `<video>` (151647) and Qwen2's `<|endoftext|>` as padding."""
    return LlavaOnevisionPruMergeConfig(
        vision_config=SIGLIP_SO400M_14_384,
        text_config={
            "model_type": "qwen2",
            "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size,
            "num_hidden_layers": shape.num_layers,
            "num_attention_heads": shape.num_heads,
            "num_key_value_heads": shape.num_kv_heads,
            "vocab_size": shape.vocab_size,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "pad_token_id": QWEN2_SPECIAL_TOKENS_START,
        },
        image_token_index=QWEN2_SPECIAL_TOKENS_START + 3,
        video_token_index=QWEN2_SPECIAL_TOKENS_START + 4,
        image_grid_pinpoints=[list(resolution) for resolution in shape.prompt.anyres.grid_pinpoints],
        vision_aspect_ratio=f"anyres_max_{shape.prompt.anyres.max_crops}",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
        pad_token_id=QWEN2_SPECIAL_TOKENS_START,
    )


# Qwen/Qwen2.5-VL-7B-Instruct's tower: 32 blocks of 1280, windows of 112 px except 4 full-attention blocks
QWEN2_5_VL_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "hidden_act": "silu", "in_channels": 3,
}  # fmt: skip


def qwen2_5_vl_config(shape: Architecture) -> Qwen2_5_VLPruMergeConfig:
    """Qwen2.5-VL-7B (Qwen/Qwen2.5-VL-7B-Instruct): its tower, a Qwen2.5 LLM of the shape's size with mRoPE,
    `<|image_pad|>` (151655) and the vision start / end tokens (151652, 151653)."""
    return Qwen2_5_VLPruMergeConfig(
        vision_config={**QWEN2_5_VL_VISION, "out_hidden_size": shape.hidden_size},
        text_config={
            "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
            "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
            "num_key_value_heads": shape.num_kv_heads, "vocab_size": shape.vocab_size, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128000, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "pad_token_id": QWEN2_SPECIAL_TOKENS_START,
        },
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False,
    )  # fmt: skip


TINY_CONFIGS = {
    "tiny": tiny_config,
    "tiny-video": tiny_video_config,
    "tiny-next": tiny_next_config,
    "tiny-onevision": tiny_onevision_config,
    "tiny-qwen": tiny_qwen_config,
}
FULL_SIZE_CONFIGS = {
    "llava-1.5-7b": llava_config,
    "llava-1.5-13b": llava_config,
    "video-llava-7b": video_llava_config,
    "llava-next-7b": llava_next_config,
    "llava-onevision-7b": llava_onevision_config,
    "qwen2.5-vl-7b": qwen2_5_vl_config,
}
# The ordinary text ids of each full-size LLM: past Llama's special tokens, before Qwen2's
TEXT_ID_RANGES = {
    "llava-onevision-7b": (0, QWEN2_SPECIAL_TOKENS_START),
    "qwen2.5-vl-7b": (0, QWEN2_SPECIAL_TOKENS_START),
}


def ordinary_text_ids(config: PretrainedConfig, first: int, end: int) -> torch.Tensor:
    """The ids in [first, end) the random text is drawn from: no image or video placeholder among them."""
    placeholders = {
        getattr(config, f"{modality}_token_id", None)
        for modality in ("image", "video", "vision_start", "vision_end")
    }
    return torch.tensor([i for i in range(first, end) if i not in placeholders])


def random_architecture(arch: str, layers: int | None = None) -> RandomArchitecture:
    """The config of LLaVA-1.5 (CLIP ViT-L/14-336, layer -2 features, Llama LLM), of LLaVA-NeXT, of
    Video-LLaVA, of LLaVA-OneVision, of Qwen2.5-VL, or of a tiny test model, with `layers` LLM layers (default:
    all)."""
    shape = ARCHITECTURES[arch]
    if arch in TINY_CONFIGS:
        config = TINY_CONFIGS[arch]()
        first_text_id, end_text_id = len(TINY_SPECIAL_TOKENS), config.text_config.vocab_size
    else:
        config = FULL_SIZE_CONFIGS[arch](shape)
        first_text_id, end_text_id = TEXT_ID_RANGES.get(arch, (len(LLAMA_SPECIAL_TOKENS), shape.vocab_size))
    full_depth = config.text_config.num_hidden_layers
    if layers is not None:
        if layers > full_depth:
            raise UsageError(f"--layers {layers} exceeds {arch}'s {full_depth} LLM layers")
        config.text_config.num_hidden_layers = layers
        if getattr(
            config.text_config, "layer_types", None
        ):  # one per layer, as transformers 5 checks on load
            config.text_config.layer_types = config.text_config.layer_types[:layers]
    return RandomArchitecture(config, full_depth, ordinary_text_ids(config, first_text_id, end_text_id))


def _available_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _check_weights_fit(config: LlavaPruMergeConfig, dtype: torch.dtype, device: torch.device) -> None:
    """Fail before building a model that cannot fit, instead of being killed half-way."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForImageTextToText.from_config(config).parameters())
    needed = parameters * torch.finfo(dtype).bits // 8
    available = _available_memory_bytes(device)
    if available is not None and needed > WEIGHT_MEMORY_BUDGET * available:
        raise UsageError(
            f"{parameters / 1e9:.2f}B parameters need {needed / 1e9:.1f} GB in {str(dtype).removeprefix('torch.')} "
            f"but {device} has {available / 1e9:.1f} GB available; build fewer LLM layers with --layers "
            "(e.g. --layers 2) or use --dtype bfloat16"
        )


def build_random_subject(
    arch: str,
    layers: int | None,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    image_size: tuple[int, int] | None = None,
) -> BenchSubject:
    architecture = random_architecture(arch, layers)
    config = architecture.config
    _check_weights_fit(config, dtype, device)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    visual = visual_path(model, image_size or QWEN_IMAGE_SIZES.get(arch))
    return BenchSubject(
        model=model.eval(),
        image_processor=visual.image_processor(getattr(config.vision_config, "image_size", None)),
        visual=visual,
        arch=arch,
        checkpoint=None,
        llm_layers=config.text_config.num_hidden_layers,
        full_depth_layers=architecture.full_depth_layers,
        bos_token_id=config.text_config.bos_token_id,
        text_token_ids=architecture.text_token_ids,
    )


def load_checkpoint_subject(
    spec: str, dtype: torch.dtype, device: torch.device, image_size: tuple[int, int] | None = None
) -> BenchSubject:
    model = load_prumerge_model(spec, dtype=dtype)
    config = model.config
    # the bench needs the tokenizer and the image processor only: a processor with a video processor (Video-LLaVA's,
    # LLaVA-OneVision's) would need torchvision to be built
    tokenizer = AutoTokenizer.from_pretrained(spec)
    excluded = {*tokenizer.all_special_ids, config.image_token_id, getattr(config, "video_token_id", None)}
    layers = config.text_config.num_hidden_layers
    return BenchSubject(
        model=model.to(device).eval(),
        image_processor=AutoImageProcessor.from_pretrained(spec),
        visual=visual_path(model, image_size),
        arch=None,
        checkpoint=spec,
        llm_layers=layers,
        full_depth_layers=layers,
        bos_token_id=tokenizer.bos_token_id,
        text_token_ids=torch.tensor([i for i in range(len(tokenizer)) if i not in excluded]),
    )


def make_inputs(subject: BenchSubject, batch_size: int, text_tokens: int, seed: int) -> BenchInputs:
    """The expanded prompt a stock processor produces: bos, the image's (video's) placeholders, the text."""
    config, visual = subject.model.config, subject.visual
    # the pixels first: a native-resolution image's placeholders follow from how its processor resized it
    pixel_values = visual.synthetic_pixels(subject.image_processor, config, batch_size, seed)
    generator = torch.Generator().manual_seed(seed)
    bos = [] if subject.bos_token_id is None else [subject.bos_token_id]
    placeholders = visual.placeholder_ids(config)
    pool = subject.text_token_ids
    rows = []
    for _ in range(batch_size):
        text = pool[torch.randint(len(pool), (text_tokens - len(bos),), generator=generator)].tolist()
        rows.append(bos + placeholders + text)
    device = subject.model.device
    input_ids = torch.tensor(rows, device=device)
    return BenchInputs(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=pixel_values.to(device, subject.model.dtype),
    )
