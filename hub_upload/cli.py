"""The `convert`, `export` and `upload` subcommands (arguments only; the work is imported when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..architectures import ARCHITECTURES
from ..common.cli_args import DTYPE_NAMES, add_reduction_arguments, reduction_fields_from_args
from ..errors import UsageError


def _add_output_arguments(parser: argparse.ArgumentParser, *, dtype_default: str) -> None:
    """The options `export` and `convert` share: the output folder and what goes into it."""
    parser.add_argument("--out", type=Path, required=True, help="the Hub folder to write (must not exist)")
    add_reduction_arguments(parser, "the published PruMerge reducer's settings")
    dtypes = list(DTYPE_NAMES) if dtype_default != "auto" else ["auto", *DTYPE_NAMES]
    parser.add_argument(
        "--dtype", choices=dtypes, default=dtype_default, help=f"weight dtype (default {dtype_default})"
    )
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--model-id", help="Hub id shown in the model card's usage snippet (default: --out)")
    parser.add_argument(
        "--license", help="model card license (default: llama2, Vicuna's; apache-2.0 for --tiny and --mini)"
    )
    parser.add_argument("--base-model", action="append", help="model card base_model (repeatable; Hub ids)")


def _save(args: argparse.Namespace, model, processor, card_defaults: dict) -> Path:
    from .export import report_written, save_hub_folder

    overrides = {"license": args.license, "base_model": args.base_model}
    folder = save_hub_folder(
        model,
        processor,
        args.out,
        max_shard_size=args.max_shard_size,
        model_card_extra={**card_defaults, **{key: value for key, value in overrides.items() if value}},
        model_id=args.model_id,
        overwrite=args.overwrite,
    )
    report_written(folder)
    return folder


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, required=True, metavar="VICUNA_DIR", help="base LLM folder")
    parser.add_argument("--vision-tower", type=Path, required=True, metavar="CLIP_DIR", help="CLIP folder")
    parser.add_argument(
        "--lora", type=Path, required=True, metavar="LORA_DIR", help="LLaVA LoRA training output folder"
    )
    _add_output_arguments(parser, dtype_default="float16")


def run_convert(args: argparse.Namespace) -> Path:
    """Convert a checkpoint in the original LLaVA training format (LoRA on Vicuna, as the paper's) to a
    PruMerge Hub folder.

    Inputs, all local folders: the base LLM (e.g. lmsys/vicuna-7b-v1.5), the CLIP vision tower (e.g.
    openai/clip-vit-large-patch14-336, a full CLIPModel or a CLIPVisionModel) and the LoRA training
    output (config.json of LlavaLlamaForCausalLM, adapter_config.json, adapter_model.safetensors or
    .bin, non_lora_trainables.bin holding the projector). The LoRA is merged into the base with PEFT,
    the `<image>` and pad tokens are added as llava-hf did, and the result is written as a Hub folder.
    """
    from ..common.loading import DTYPES
    from ..common.output_folders import refuse_existing
    from .convert import convert_llava_lora

    refuse_existing(args.out, args.overwrite)
    converted = convert_llava_lora(
        args.base, args.vision_tower, args.lora, dtype=DTYPES[args.dtype], **reduction_fields_from_args(args)
    )
    return _save(args, converted.model, converted.processor, converted.card_metadata)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-hf",
        type=Path,
        metavar="STOCK_DIR",
        help="a local stock checkpoint folder (llava-hf LLaVA-1.5 or LLaVA-NeXT, or Video-LLaVA-hf)",
    )
    source.add_argument("--tiny", action="store_true", help="tiny random weights, for tests and demos")
    source.add_argument(
        "--mini", action="store_true", help="the mini model trained on Shapes-VQA, shipped in the package"
    )
    parser.add_argument(
        "--arch",
        choices=[arch.name for arch in ARCHITECTURES],
        default="llava",
        help="with --tiny: the architecture (default llava; --from-hf reads it from the checkpoint)",
    )
    _add_output_arguments(parser, dtype_default="auto")


def run_export(args: argparse.Namespace) -> Path:
    """Write a PruMerge Hub folder: from a stock checkpoint (PruMerge applied training-free: llava-hf
    LLaVA-1.5 or LLaVA-NeXT, or Video-LLaVA, recognized from its config), the mini model shipped in the
    package (trained here on the synthetic Shapes-VQA task, --mini), or tiny random weights (--tiny, --arch).

    The folder loads with `trust_remote_code=True` under transformers 4.57 and 5.x without this
    package: sharded safetensors with an index, config.json with `auto_map`, the model code, the
    tokenizer and processor files in the layout both majors read, and a model card.
    """
    from ..common.loading import DTYPES
    from ..common.output_folders import refuse_existing
    from .export import wrap_stock_checkpoint

    refuse_existing(args.out, args.overwrite)
    dtype = DTYPES.get(args.dtype, "auto")
    fields = reduction_fields_from_args(args)
    if args.tiny:
        model, processor = _tiny_model_and_processor(args.arch, fields)
        model = model if dtype == "auto" else model.to(dtype)
        return _save(args, model, processor, {"license": "apache-2.0", "tags": ["tiny", "random-weights"]})
    if args.arch != "llava":
        raise UsageError("--arch applies to --tiny; --from-hf and --mini have their own architecture")
    if args.mini:
        from ..mini.model import MODEL_CARD_TAGS, add_card_note, load_mini

        model, processor = load_mini(**fields)
        model = model if dtype == "auto" else model.to(dtype)
        return add_card_note(
            _save(args, model, processor, {"license": "apache-2.0", "tags": MODEL_CARD_TAGS})
        )
    model, processor = wrap_stock_checkpoint(args.from_hf, dtype=dtype, **fields)
    return _save(args, model, processor, {})


def _tiny_model_and_processor(arch_name: str, fields: dict):
    """The tiny random-weight model of an architecture and its processor (or, for Video-LLaVA, its parts)."""
    if arch_name == "llava-next":
        from ..testing.tiny import tiny_tokenizer
        from ..testing.tiny_next import tiny_next_model, tiny_next_processor

        tokenizer = tiny_tokenizer()
        return tiny_next_model(tokenizer=tokenizer, **fields), tiny_next_processor(tokenizer)
    if arch_name in ("qwen2.5-vl", "qwen2-vl"):
        from ..testing.tiny_qwen import tiny_qwen_model, tiny_qwen_parts

        processor = tiny_qwen_parts()
        return tiny_qwen_model(arch_name, tokenizer=processor.tokenizer, **fields), processor
    if arch_name == "llava-onevision":
        from ..testing.tiny_onevision import tiny_onevision_model, tiny_onevision_parts

        processor = tiny_onevision_parts()
        return tiny_onevision_model(tokenizer=processor.tokenizer, **fields), processor
    if arch_name == "video-llava":
        from ..common.conversation import VICUNA_CHAT_TEMPLATE
        from ..testing.tiny import TINY_PATCH_SIZE
        from ..testing.tiny_video import tiny_video_image_processor, tiny_video_model, tiny_video_tokenizer
        from .compat import ProcessorParts

        tokenizer = tiny_video_tokenizer()
        tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
        processor = ProcessorParts(
            tokenizer=tokenizer, image_processor=tiny_video_image_processor(), patch_size=TINY_PATCH_SIZE,
            video_token="<video>", chat_template=VICUNA_CHAT_TEMPLATE,
        )  # fmt: skip
        return tiny_video_model(tokenizer=tokenizer, **fields), processor
    from ..testing.tiny import tiny_model, tiny_processor, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return tiny_model(tokenizer=tokenizer, **fields), tiny_processor(tokenizer)


def add_upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="OUT", help="a Hub folder written by export or convert")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub model repository")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if missing)")
    parser.add_argument("--commit-message", help="default: 'Upload <folder name>'")
    parser.add_argument("--dry-run", action="store_true", help="list what would be pushed; push nothing")


def run_upload(args: argparse.Namespace, api=None) -> list[Path]:
    """Validate a PruMerge Hub folder again, then push it to the Hugging Face Hub in one commit.

    The token comes from huggingface_hub's standard places (HF_TOKEN, or `hf auth login`); it is never
    read, printed or logged here. An interrupted push is resumed by running the command again.
    """
    from .upload import upload_hub_folder

    return upload_hub_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        api=api,
    )
