"""Convert a checkpoint in the original LLaVA training format (LoRA on Vicuna, as the paper's) to a PruMerge Hub folder.

Inputs, all local folders: the base LLM (e.g. lmsys/vicuna-7b-v1.5), the CLIP vision tower (e.g.
openai/clip-vit-large-patch14-336, a full CLIPModel or a CLIPVisionModel) and the LoRA training
output (config.json of LlavaLlamaForCausalLM, adapter_config.json, adapter_model.safetensors or
.bin, non_lora_trainables.bin holding the projector). The LoRA is merged into the base with PEFT,
the `<image>` and pad tokens are added as llava-hf did (ids 32000 and 32001 for Vicuna, embeddings
padded to a multiple of 64), and the result is written with `save_hub_folder`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from accelerate import init_empty_weights
from safetensors.torch import load_file
from tokenizers import AddedToken
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    LlavaProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from ..common.conversation import IMAGE_PLACEHOLDER, VICUNA_CHAT_TEMPLATE
from ..common.file_checks import first_unreadable
from ..configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from ..errors import ConversionError
from ..modeling.modeling_llava_prumerge import LlavaPruMergeForConditionalGeneration
from ..modeling.runtime_compat import extra_special_tokens
from .compat import llava_image_processor

PAD_TOKEN = "<pad>"
VOCAB_MULTIPLE = 64  # llava-hf: pad_to_multiple_of=64 (32002 tokens -> 32064 rows)
# Original LLaVA (LlavaLlamaForCausalLM) parameter prefix -> HF LLaVA module prefix; the first match applies.
ORIGINAL_TO_HF = (
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.", "model.vision_tower."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)
PROJECTOR_KEYS = ("model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight", "model.mm_projector.2.bias")  # fmt: skip
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class ConvertedCheckpoint:
    """What `convert_llava_lora` builds in memory, ready for `save_hub_folder`."""

    model: LlavaPruMergeForConditionalGeneration
    processor: LlavaProcessor
    card_metadata: dict


def hf_key(original_key: str) -> str:
    """An original LLaVA parameter name (PEFT's `base_model.model.` prefix allowed) -> the HF LLaVA module name."""
    key = original_key.removeprefix("base_model.model.")
    for original, hf in ORIGINAL_TO_HF:
        if key.startswith(original):
            return hf + key[len(original) :]
    raise ConversionError(f"{original_key} is not an original LLaVA parameter name")


def _required_file(folder: Path, *names: str, holds: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"{folder / names[0]} is missing ({' or '.join(names)}: {holds})")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a JSON {type(data).__name__}, not the object a config is")
    return data


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a legacy pickle read with weights_only=True (tensors only, no code)."""
    if path.suffix == ".safetensors":
        _check_readable(path)  # names the file and what is wrong, where safetensors would not
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable or unsafe pickles
        raise ConversionError(
            f"{path} does not load as a tensor state dict (weights_only=True): {error}"
        ) from error


@contextlib.contextmanager
def _quiet_transformers():
    """Silence load reports: a full CLIPModel checkpoint has text-tower weights the vision tower ignores."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


@dataclass
class LlavaSettings:
    """What the LoRA folder's config.json says about the multimodal part."""

    vision_feature_layer: int
    do_pad: bool
    base_model_ids: list[str]


def _llava_settings(config_path: Path, llava: dict, vision: CLIPVisionConfig, base: dict) -> LlavaSettings:
    def fail(key: str, message: str) -> ConversionError:
        return ConversionError(f"{config_path}: {key}={llava.get(key)!r} {message}")

    if llava.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise fail(
            "mm_projector_type", "is not supported; HF LLaVA's projector is the 2-layer GELU MLP 'mlp2x_gelu'"
        )
    for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if llava.get(key):
            raise fail(key, "is not supported: LLaVA-1.5 and HF LLaVA use a bare <image> token (set false)")
    if llava.get("mm_vision_select_feature", "patch") != "patch":
        raise fail("mm_vision_select_feature", "is not supported; PruMerge reduces patch features ('patch')")
    aspect = llava.get("image_aspect_ratio", "square")
    if aspect not in ("pad", "square"):
        raise fail("image_aspect_ratio", "is not supported; LLaVA-1.5 uses 'pad' (or 'square')")
    layer = llava.get("mm_vision_select_layer", -1)
    layers = vision.num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(layers + 1) <= layer <= layers:
        raise fail(
            "mm_vision_select_layer",
            f"is out of range for the vision tower's {layers} layers (hidden states {-(layers + 1)}..{layers})",
        )
    if llava.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise fail("mm_hidden_size", f"does not match the vision tower's hidden_size {vision.hidden_size}")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key in llava and key in base and llava[key] != base[key]:
            raise fail(key, f"does not match the base model's {key}={base[key]} (a different base LLM?)")
    names = [str(llava.get(key) or "") for key in ("_name_or_path", "mm_vision_tower")]
    hub_ids = [name for name in names if HUB_ID.match(name) and not Path(name).exists()]  # not local paths
    return LlavaSettings(layer, aspect == "pad", hub_ids)


def _load_projector(path: Path, llm_hidden: int, vision_hidden: int) -> dict[str, torch.Tensor]:
    """The projector from non_lora_trainables, keyed by HF LLaVA module names, shapes checked."""
    original = {key.removeprefix("base_model.model."): tensor for key, tensor in _load_tensors(path).items()}
    unexpected = sorted(set(original) - set(PROJECTOR_KEYS))
    if unexpected:
        raise ConversionError(
            f"{path}: unexpected key(s) {unexpected[:3]}; only the mlp2x_gelu projector "
            f"({', '.join(PROJECTOR_KEYS)}) is supported"
        )
    expected = {
        PROJECTOR_KEYS[0]: (llm_hidden, vision_hidden),
        PROJECTOR_KEYS[1]: (llm_hidden,),
        PROJECTOR_KEYS[2]: (llm_hidden, llm_hidden),
        PROJECTOR_KEYS[3]: (llm_hidden,),
    }
    for key, shape in expected.items():
        if key not in original:
            raise ConversionError(f"{path}: {key} is missing (the projector must be in non_lora_trainables)")
        if tuple(original[key].shape) != shape:
            raise ConversionError(
                f"{path}: {key} has shape {tuple(original[key].shape)}, expected {shape} "
                f"(language model hidden size {llm_hidden}, vision tower hidden size {vision_hidden})"
            )
    return {hf_key(key): tensor for key, tensor in original.items()}


def _merged_llm(base_dir: Path, lora_dir: Path, adapter_path: Path, dtype: torch.dtype):
    """The base LLM with the LoRA applied by PEFT and merged; every adapter weight must reach a layer."""
    from peft import PeftModel, get_peft_model_state_dict

    adapter_config_path = lora_dir / "adapter_config.json"
    peft_type = _read_json(adapter_config_path).get("peft_type")
    if peft_type != "LORA":
        raise ConversionError(
            f"{adapter_config_path}: peft_type={peft_type!r}; only LoRA adapters are supported"
        )
    adapter_weights = set(_load_tensors(adapter_path))  # a damaged file is named before PEFT reads it
    _check_folder_weights(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    try:
        peft_model = PeftModel.from_pretrained(base, lora_dir)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConversionError(f"{adapter_path} does not fit the base model in {base_dir}: {error}") from error
    adapted = set(get_peft_model_state_dict(peft_model))
    not_loaded = sorted(adapter_weights - adapted)
    if not_loaded:
        raise ConversionError(
            f"{adapter_path}: {len(not_loaded)} LoRA weight(s) match no layer of the base model, e.g. "
            f"{not_loaded[:2]}; expected keys like base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        )
    missing = sorted(adapted - adapter_weights)  # PEFT would keep these randomly initialized
    if missing:
        raise ConversionError(
            f"{adapter_path} lacks {len(missing)} LoRA weight(s) of the layers its adapter_config.json adapts "
            f"(target_modules), e.g. {missing[:2]}; PEFT would merge random weights there. Use the complete "
            "adapter, or list only the trained modules in target_modules"
        )
    return peft_model.merge_and_unload()


def _check_folder_weights(folder: Path) -> None:
    _check_readable(*sorted(folder.glob("*.safetensors")))


def _check_readable(*paths: Path) -> None:
    """Safetensors files whose headers and sizes agree; otherwise an error naming the first bad one."""
    if problem := first_unreadable(paths):
        raise ConversionError(problem)


def _add_llava_tokens(tokenizer) -> tuple[int, int]:
    """Add `<image>` (and `<pad>` where there is no pad token), as llava-hf did; their ids."""
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        image = AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)
        tokenizer.add_special_tokens({"additional_special_tokens": [*extra_special_tokens(tokenizer), image]})
    if "pad_token" not in tokenizer.special_tokens_map:
        tokenizer.add_special_tokens({"pad_token": AddedToken(PAD_TOKEN, special=True, normalized=False)})
    return tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER), tokenizer.pad_token_id


def _grown(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` with rows appended up to `rows`, each the mean of the existing rows.

    llava-hf sampled new rows from a normal distribution around that mean with a 1e-5-scaled
    covariance; the mean is that distribution's center, deterministic, and gives the new tokens
    an average logit, so they are not generated.
    """
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)])


def _image_processor(vision_dir: Path, vision: CLIPVisionConfig, do_pad: bool):
    size = vision.image_size
    if (vision_dir / "preprocessor_config.json").is_file():
        clip_processor = CLIPImageProcessor.from_pretrained(vision_dir)
        crop = clip_processor.crop_size
        if (crop["height"], crop["width"]) != (size, size):
            raise ConversionError(
                f"{vision_dir / 'preprocessor_config.json'}: crop_size {crop} does not match the vision tower's "
                f"image_size {size}"
            )
        return llava_image_processor(clip_processor, do_pad=do_pad)
    return llava_image_processor(
        do_pad=do_pad,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


@dataclass
class OriginalCheckpoint:
    """The files of an original-format checkpoint, found and checked, and what its configs say."""

    base_dir: Path
    vision_tower_dir: Path
    lora_dir: Path
    adapter_path: Path
    projector_path: Path
    vision_config: CLIPVisionConfig
    base: dict  # the base LLM's config.json
    settings: LlavaSettings


def convert_llava_lora(
    base_dir: str | Path,
    vision_tower_dir: str | Path,
    lora_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    **reduction_fields,
) -> ConvertedCheckpoint:
    """Build the PruMerge model and processor from the original-format checkpoint (nothing is written)."""
    checkpoint = _original_checkpoint(Path(base_dir), Path(vision_tower_dir), Path(lora_dir))
    vision_config, settings = checkpoint.vision_config, checkpoint.settings
    projector = _load_projector(
        checkpoint.projector_path, checkpoint.base["hidden_size"], vision_config.hidden_size
    )
    _check_folder_weights(checkpoint.vision_tower_dir)
    with _quiet_transformers():
        vision_tower, info = CLIPVisionModel.from_pretrained(
            checkpoint.vision_tower_dir, dtype=dtype, output_loading_info=True
        )
    if info["missing_keys"]:
        raise ConversionError(
            f"{checkpoint.vision_tower_dir} lacks vision-tower weights, e.g. {sorted(info['missing_keys'])[:3]}"
        )
    llm = _merged_llm(checkpoint.base_dir, checkpoint.lora_dir, checkpoint.adapter_path, dtype)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.base_dir)
    image_token_id, pad_token_id = _add_llava_tokens(tokenizer)
    rows = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        rows = math.ceil(len(tokenizer) / VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    state = {hf_key(name): tensor for name, tensor in llm.state_dict().items()}
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        state[name] = _grown(state[name], rows)
    state.update({f"model.vision_tower.{name}": tensor for name, tensor in vision_tower.state_dict().items()})
    state.update({name: tensor.to(dtype) for name, tensor in projector.items()})

    text_config = {
        key: value
        for key, value in llm.config.to_dict().items()
        if key not in ("_name_or_path", "architectures", "transformers_version")
    }
    text_config.update(vocab_size=rows, pad_token_id=pad_token_id)
    config = LlavaPruMergeConfig(
        vision_config={k: v for k, v in vision_config.to_dict().items() if k != "_name_or_path"},
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        vision_feature_layer=settings.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=pad_token_id,
        **reduction_fields,
    )
    with init_empty_weights(include_buffers=False):
        model = LlavaPruMergeForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    if getattr(config.text_config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_token_id
    )
    metadata = {"license": "llama2"}
    if settings.base_model_ids:
        metadata["base_model"] = settings.base_model_ids
    return ConvertedCheckpoint(model.eval(), _processor(tokenizer, checkpoint), metadata)


def _original_checkpoint(base_dir: Path, vision_tower_dir: Path, lora_dir: Path) -> OriginalCheckpoint:
    """Every file `convert` needs, present and of the kinds it can convert, before anything heavy loads."""
    base_config_path = _required_file(base_dir, "config.json", holds="the base LLM's config")
    vision_config_path = _required_file(
        vision_tower_dir, "config.json", holds="the CLIP vision tower's config"
    )
    _required_file(base_dir, "tokenizer.json", "tokenizer.model", holds="the base LLM's tokenizer")
    lora_config_path = _required_file(lora_dir, "config.json", holds="the LlavaLlamaForCausalLM config")
    _read_json(_required_file(lora_dir, "adapter_config.json", holds="the PEFT LoRA config"))
    adapter_path = _required_file(
        lora_dir, "adapter_model.safetensors", "adapter_model.bin", holds="the LoRA weights"
    )
    projector_path = _required_file(
        lora_dir, "non_lora_trainables.bin", "non_lora_trainables.safetensors", holds="the projector weights"
    )
    vision_model_type = _read_json(vision_config_path).get("model_type")
    if vision_model_type not in ("clip", "clip_vision_model"):
        raise ConversionError(
            f"{vision_config_path}: model_type={vision_model_type!r}; the vision tower must be a CLIP checkpoint "
            "(CLIPModel or CLIPVisionModel, e.g. openai/clip-vit-large-patch14-336)"
        )
    vision_config = CLIPVisionConfig.from_pretrained(vision_tower_dir)
    base = _read_json(base_config_path)
    settings = _llava_settings(lora_config_path, _read_json(lora_config_path), vision_config, base)
    return OriginalCheckpoint(
        base_dir, vision_tower_dir, lora_dir, adapter_path, projector_path, vision_config, base, settings
    )


def _processor(tokenizer, checkpoint: OriginalCheckpoint) -> LlavaProcessor:
    """LLaVA-1.5's processor: the vicuna_v1 template, left padding, CLIP's image settings (padded to square)."""
    vision_config = checkpoint.vision_config
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return LlavaProcessor(
        image_processor=_image_processor(
            checkpoint.vision_tower_dir, vision_config, checkpoint.settings.do_pad
        ),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_PLACEHOLDER,
        num_additional_image_tokens=1,  # CLIP's [CLS]
        chat_template=VICUNA_CHAT_TEMPLATE,
    )
