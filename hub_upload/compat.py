"""Config, tokenizer and processor files in the layout that both transformers majors read.

A Hub folder is written once and loaded under 4.57 and 5.x. Files saved by 5.x can be unreadable by
4.57 (tokenizer_class `TokenizersBackend`, the image processor nested in `processor_config.json`,
`extra_special_tokens` as a list, RoPE settings only in `rope_parameters`), while 5.x reads the 4.x
layout. So these files are written here, in the 4.x layout, whatever major runs the export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import LlavaImageProcessor

from ..architectures import Architecture
from ..errors import UsageError
from ..modeling.runtime_compat import extra_special_tokens

TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # see write_tokenizer_files
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
# The image processor settings that 4.57 and 5.x share (5.x adds backend-specific ones).
IMAGE_PROCESSOR_KEYS = (
    "do_pad", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
    "image_grid_pinpoints",  # LLaVA-NeXT's and LLaVA-OneVision's AnyRes grids
    "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size",  # Qwen-VL's native resolution
)  # fmt: skip
# The video processor settings both majors read; Video-LLaVA's frames take its image processor's transforms.
VIDEO_PROCESSOR_KEYS = tuple(
    key for key in IMAGE_PROCESSOR_KEYS if key not in ("do_pad", "image_grid_pinpoints")
)
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def config_for_both_majors(config: dict) -> dict:
    """A saved config.json dict, plus the RoPE keys 4.57 reads where 5.x wrote only `rope_parameters`.

    4.57 ignores `rope_parameters` and would silently run the default RoPE; 5.x reads either form.
    """
    text_config = dict(config.get("text_config") or {})
    rope = text_config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in text_config:
        text_config["rope_theta"] = rope["rope_theta"]
        scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
        text_config["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    if isinstance(rope, dict) and "mrope_section" in rope and not text_config.get("rope_scaling"):
        # Qwen-VL's 3-D rotary split, which 4.57 reads from rope_scaling only
        text_config["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    return {**config, "text_config": text_config}


def with_pixel_bounds(settings: dict) -> dict:
    """Qwen-VL processor settings with `min_pixels` / `max_pixels` beside `size`: transformers 5 keeps the bounds
    in `size` ({shortest_edge, longest_edge}) only, which 4.57 does not read (it would resize to its defaults)."""
    size = settings.get("size") or {}
    if (
        "merge_size" in settings
        and "min_pixels" not in settings
        and {"shortest_edge", "longest_edge"} <= set(size)
    ):
        return {**settings, "min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}
    return settings


def write_tokenizer_files(tokenizer, folder: Path) -> None:
    """`tokenizer.json` (the tokenizers pipeline, verbatim) and a 4.x-layout `tokenizer_config.json`.

    The class is `PreTrainedTokenizerFast` whatever the tokenizer's own class: both majors load
    tokenizer.json verbatim into it, while model-specific classes (e.g. 5.x's LlamaTokenizer)
    rebuild the normalizer, pre-tokenizer and decoder from their own code. `model_input_names`
    keeps `token_type_ids` out of `generate`.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer; a Hub folder needs tokenizer.json. "
            "Load the tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    added_tokens = {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    special_tokens = {
        name: str(token)
        for name, token in tokenizer.special_tokens_map.items()
        if name in SPECIAL_TOKEN_NAMES
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": TOKENIZER_CLASS,
            **special_tokens,
            "additional_special_tokens": extra_special_tokens(tokenizer),
            "added_tokens_decoder": added_tokens,
            "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
            "model_input_names": MODEL_INPUT_NAMES,
            "model_max_length": int(tokenizer.model_max_length),
            "padding_side": tokenizer.padding_side,
        },
    )


@dataclass
class ProcessorParts:
    """A stock processor described by its parts, for writing its files where it cannot be built (Video-LLaVA's
    video processor needs torchvision): the video processor's settings then follow the image processor's."""

    tokenizer: object
    image_processor: object
    patch_size: int | None = None  # LLaVA, LLaVA-NeXT and Video-LLaVA processors count patches from it
    vision_feature_select_strategy: str = "default"
    num_additional_image_tokens: int = 1
    image_token: str = "<image>"
    video_token: str | None = None
    chat_template: str | None = None
    video_processor: object = None
    num_image_tokens: int | None = None  # LLaVA-OneVision's: a view's placeholders
    vision_aspect_ratio: str | None = None  # LLaVA-OneVision's: anyres_max_<crops>


def write_processor_files(processor, folder: Path, arch: Architecture) -> None:
    """Tokenizer files, `preprocessor_config.json` (the image processor), `video_preprocessor_config.json`
    (the video processor, for video models), `processor_config.json` (only the processor's own settings)
    and `chat_template.jinja` (read by both majors' tokenizer and processor). `processor` is the stock
    processor of `arch` or its `ProcessorParts`."""
    image_processor = processor.image_processor
    if not type(image_processor).__name__.startswith(arch.image_processor_type):
        raise UsageError(
            f"The processor's image processor is {type(image_processor).__name__}; a PruMerge {arch.name} Hub folder "
            f"uses {arch.image_processor_type}"
            + (
                " (do_pad=True pads images to a square as LLaVA-1.5 training did). Build one with "
                "llava_prumerge.hub_upload.compat.llava_image_processor(...)"
                if arch.image_processor_type == "LlavaImageProcessor"
                else ""
            )
        )
    write_tokenizer_files(processor.tokenizer, folder)
    settings = with_pixel_bounds(image_processor.to_dict())
    write_json(
        folder / "preprocessor_config.json",
        {
            **{key: settings[key] for key in IMAGE_PROCESSOR_KEYS if key in settings},
            "image_processor_type": arch.image_processor_type,
            "processor_class": arch.processor_class,
        },
    )
    token_settings = {"image_token": processor.image_token} if arch.processor_tokens else {}
    if arch.video_processor_type:
        video_processor = getattr(processor, "video_processor", None)
        video_settings = with_pixel_bounds((video_processor or image_processor).to_dict())
        write_json(
            folder / VIDEO_PROCESSOR_FILE,
            {
                **{key: video_settings[key] for key in VIDEO_PROCESSOR_KEYS if key in video_settings},
                "video_processor_type": arch.video_processor_type,
                "processor_class": arch.processor_class,
            },
        )
        if arch.processor_tokens:
            token_settings["video_token"] = processor.video_token
    write_json(
        folder / "processor_config.json",
        {
            "processor_class": arch.processor_class,
            **token_settings,
            **{key: getattr(processor, key) for key in arch.processor_keys},
        },
    )
    template = processor.chat_template or processor.tokenizer.chat_template
    tokenizer_template = processor.tokenizer.chat_template
    if tokenizer_template and tokenizer_template != template:
        raise UsageError(
            "The processor and its tokenizer have different chat templates, but a Hub folder holds one "
            f"{CHAT_TEMPLATE_FILE} that both load; set processor.tokenizer.chat_template = processor.chat_template"
        )
    if not template:
        raise UsageError(
            "The processor has no chat template; set processor.chat_template (e.g. VICUNA_CHAT_TEMPLATE)"
        )
    (folder / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")


def llava_image_processor(image_processor=None, *, do_pad: bool = True, **overrides) -> LlavaImageProcessor:
    """A LlavaImageProcessor with the settings of `image_processor` (e.g. llava-hf's CLIPImageProcessor),
    padding images to a square with the mean color before resizing, as LLaVA-1.5 training did."""
    settings = image_processor.to_dict() if image_processor is not None else {}
    kwargs = {key: settings[key] for key in IMAGE_PROCESSOR_KEYS if key in settings}
    return LlavaImageProcessor(**{**kwargs, **overrides, "do_pad": do_pad})
