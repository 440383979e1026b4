"""Write a PruMerge Hub folder: from a stock LLaVA-family checkpoint (PruMerge applied training-free) or tiny random weights.

The folder loads with `trust_remote_code=True` under transformers 4.57 and 5.x without this
package: sharded safetensors with an index, config.json with `auto_map`, the model code, the
tokenizer and processor files in the layout both majors read, and a model card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    LlavaNextProcessor,
    LlavaProcessor,
    VideoLlavaImageProcessor,
)

from ..architectures import ARCHITECTURES, architecture_for
from ..common.conversation import VICUNA_CHAT_TEMPLATE
from ..common.file_checks import damaged_file_problem
from ..common.output_folders import written_whole
from ..errors import MissingInputError, UsageError
from ..modeling.modeling_prumerge import PruMergeForConditionalGenerationMixin
from .budget_processor import has_budget_processor, write_budget_processor
from .compat import (
    ProcessorParts,
    config_for_both_majors,
    llava_image_processor,
    write_json,
    write_processor_files,
)
from .model_card import render_model_card
from .remote_code import remote_code_files
from .upload import human_size
from .validate import validate_hub_folder
from .weights import dtype_name, write_weights


def save_hub_folder(
    model: PruMergeForConditionalGenerationMixin,
    processor,
    out_dir: str | os.PathLike,
    *,
    max_shard_size: int | str = "2GB",
    model_card_extra: dict | None = None,
    model_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete Hub folder for `model` and `processor` at `out_dir`, atomically.

    Everything is written into a hidden sibling folder, validated, then renamed to `out_dir`
    (`common.output_folders`): an interrupted export leaves no `out_dir`, and what a killed one left
    is removed by the next export to the same folder. An existing
    `out_dir` is refused unless `overwrite`. `model_card_extra` updates the card's Hub metadata
    (e.g. `{"license": ..., "base_model": ..., "tags": [...]}`; tags are added); `model_id` is the
    id in the card's usage snippet (default: `out_dir` as given).
    """
    if not isinstance(model, PruMergeForConditionalGenerationMixin):
        raise UsageError(
            f"save_hub_folder needs a PruMerge model (e.g. LlavaPruMergeForConditionalGeneration), got "
            f"{type(model).__name__}; merge adapters first (PeftModel.merge_and_unload())"
        )
    out_dir = Path(out_dir)
    with written_whole(out_dir, overwrite) as staging:
        _write_folder(model, processor, staging, max_shard_size, model_card_extra, model_id or str(out_dir))
        validate_hub_folder(staging)
    return out_dir


def _write_folder(model, processor, folder: Path, max_shard_size, model_card_extra, model_id: str) -> None:
    arch = architecture_for(model.config.model_type)
    write_weights(model, folder, max_shard_size)
    model.generation_config.save_pretrained(folder)
    config = model.config.to_diff_dict()
    config.update(architectures=[arch.head_class], auto_map=arch.auto_map, dtype=dtype_name(model))
    write_json(folder / "config.json", config_for_both_majors(config))
    for name, text in remote_code_files(arch).items():
        (folder / name).write_text(text, encoding="utf-8")
    write_processor_files(processor, folder, arch)
    if has_budget_processor(arch, model.config):
        write_budget_processor(folder, arch, model.config)
    card = render_model_card(model.config, processor, model_id=model_id, metadata=model_card_extra)
    (folder / "README.md").write_text(card, encoding="utf-8")


def wrap_stock_checkpoint(
    folder: str | os.PathLike, *, dtype: torch.dtype | str = "auto", **reduction_fields
):
    """A stock checkpoint (llava-hf/llava-1.5-7b-hf, LanguageBind/Video-LLaVA-7B-hf, ...) as a PruMerge model
    and its processor, training-free."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingInputError(
            f"{config_path} is missing; --from-hf takes a local stock checkpoint folder "
            "(e.g. a download of llava-hf/llava-1.5-7b-hf or LanguageBind/Video-LLaVA-7B-hf)"
        )
    if problem := damaged_file_problem(folder):
        raise UsageError(f"{problem}; download the checkpoint again (or finish the download)")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    arch = architecture_for(model_type)
    if arch is None:
        known = [name for arch in ARCHITECTURES for name in (arch.stock_model_type, arch.model_type)]
        raise UsageError(
            f"{config_path} has model_type {model_type!r}, not one of {known}; for an original LLaVA training "
            "checkpoint (LlavaLlamaForCausalLM + LoRA) use `llava-prumerge convert`"
        )
    config_class = arch.load("config_class")
    config = config_class.from_stock_config(AutoConfig.from_pretrained(folder), **reduction_fields)
    model, info = arch.load("head_class").from_pretrained(
        folder, config=config, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"] or info["unexpected_keys"]:
        raise UsageError(
            f"{folder} does not hold a {model_type} model's weights: missing {sorted(info['missing_keys'])[:3]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:3]}"
        )
    stock_processors = {
        "llava": _llava_processor,
        "llava-next": _llava_next_processor,
        "video-llava": _video_llava_processor,
        "llava-onevision": _llava_onevision_processor,
        "qwen2.5-vl": qwen_vl_processor,
        "qwen2-vl": qwen_vl_processor,
    }
    return model.eval(), stock_processors[arch.name](folder, config)


def _llava_processor(folder: Path, config) -> LlavaProcessor:
    """llava-hf's processor with images padded to a square (as LLaVA-1.5 trained) and the vicuna template."""
    stock = AutoProcessor.from_pretrained(folder)
    template = stock.chat_template or VICUNA_CHAT_TEMPLATE
    stock.tokenizer.chat_template = template
    return LlavaProcessor(
        image_processor=llava_image_processor(stock.image_processor, do_pad=True),
        tokenizer=stock.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=stock.image_token,
        num_additional_image_tokens=1,  # CLIP's [CLS]
        chat_template=template,
    )


def _llava_next_processor(folder: Path, config) -> LlavaNextProcessor:
    """llava-hf's LLaVA-NeXT processor, counting CLIP's [CLS] (without it the processor writes one placeholder
    fewer than the model's features) and with a chat template."""
    stock = AutoProcessor.from_pretrained(folder)
    template = stock.chat_template or stock.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
    stock.tokenizer.chat_template = template
    return LlavaNextProcessor(
        image_processor=stock.image_processor,
        tokenizer=stock.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=stock.image_token,
        num_additional_image_tokens=1,  # CLIP's [CLS]
        chat_template=template,
    )


def _video_llava_processor(folder: Path, config) -> ProcessorParts:
    """Video-LLaVA's processor as its parts: building `VideoLlavaProcessor` needs torchvision (for the video
    processor), which exporting does not; the video processor's settings follow the image processor's."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
    tokenizer.chat_template = template
    return ProcessorParts(
        tokenizer=tokenizer,
        image_processor=VideoLlavaImageProcessor.from_pretrained(folder),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's [CLS]
        image_token=tokenizer.convert_ids_to_tokens(config.image_token_id),
        video_token=tokenizer.convert_ids_to_tokens(config.video_token_id),
        chat_template=template,
    )


def _llava_onevision_processor(folder: Path, config) -> ProcessorParts:
    """LLaVA-OneVision's processor as its parts (building `LlavaOnevisionProcessor` needs torchvision, for its
    video processor): the tokenizer, the image processor, and the processor's own settings from
    processor_config.json (llava-hf's: 729 tokens a view, anyres_max_9), the model's where it has none."""
    from transformers import (
        LlavaOnevisionImageProcessor,  # transformers 5 warns when resolved without torchvision
    )

    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings_path = folder / "processor_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    template = tokenizer.chat_template or settings.get("chat_template") or _chat_template_file(folder)
    tokenizer.chat_template = template
    side = config.vision_config.image_size // config.vision_config.patch_size
    return ProcessorParts(
        tokenizer=tokenizer,
        image_processor=LlavaOnevisionImageProcessor.from_pretrained(folder),
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=tokenizer.convert_ids_to_tokens(config.image_token_id),
        video_token=tokenizer.convert_ids_to_tokens(config.video_token_id),
        chat_template=template,
        num_image_tokens=settings.get("num_image_tokens", side * side),
        vision_aspect_ratio=settings.get("vision_aspect_ratio", config.vision_aspect_ratio),
    )


def qwen_vl_processor(folder: Path | str, config=None) -> ProcessorParts:
    """Qwen-VL's processor (of a folder or Hub id) as its parts, all that images need (building it needs
    torchvision, for its video processor): the tokenizer, the image processor and the chat template."""
    from transformers import Qwen2VLImageProcessor  # transformers 5 warns when resolved without torchvision

    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = tokenizer.chat_template or _chat_template_file(folder)
    tokenizer.chat_template = template
    return ProcessorParts(
        tokenizer=tokenizer,
        image_processor=Qwen2VLImageProcessor.from_pretrained(folder),
        chat_template=template,
    )


def _chat_template_file(folder: Path) -> str | None:
    """The chat template a stock folder keeps beside its tokenizer (chat_template.jinja, or chat_template.json
    as older processors saved it), if any."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


def report_written(folder: Path) -> None:
    shards = sorted(folder.glob("*.safetensors"))
    size = human_size(sum(path.stat().st_size for path in shards))
    print(
        f"Wrote {folder} ({len(shards)} safetensors shard(s), {size}); push it with `llava-prumerge upload`"
    )
