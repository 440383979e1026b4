"""The weights of a Hub folder: sharded safetensors with an index, in the llava-hf key layout.

The layout is written here rather than by `save_pretrained`, because transformers 5 saves the
vision tower without its `vision_model.` prefix (its CLIPVisionModel has no such submodule), which
4.57 cannot load. The llava-hf layout (that of llava-hf/llava-1.5-7b-hf) loads under both majors:
4.57 maps it with LLaVA's `_checkpoint_conversion_mapping`, 5.x with the conversion mapping the
modeling file registers for `llava_prumerge` plus CLIPVisionModel's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from huggingface_hub import save_torch_state_dict

from ..architectures import architecture_for
from ..common.file_checks import INDEX_FILE, read_safetensors_header
from ..errors import UsageError
from .compat import write_json

SINGLE_SHARD = "model-00001-of-00001.safetensors"
# Module name prefix (4.57 or 5.x) -> llava-hf checkpoint prefix; the first match applies.
CHECKPOINT_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),  # 4.57's CLIPVisionModel
    ("model.vision_tower.", "vision_tower.vision_model."),  # 5.x's CLIPVisionModel
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),  # LLaVA-NeXT's row separator
    # Video-LLaVA's towers, in the layout of LanguageBind/Video-LLaVA-7B-hf
    ("model.image_tower.vision_model.", "image_tower.vision_model."),
    ("model.image_tower.", "image_tower.vision_model."),
    ("model.video_tower.vision_model.", "video_tower.vision_model."),
    ("model.video_tower.", "video_tower.vision_model."),
)
TIED_HEAD = "language_model.lm_head.weight"
# Qwen-VL's own layout (that of Qwen/Qwen2.5-VL-7B-Instruct), which both majors' conversion mappings read
QWEN_CHECKPOINT_PREFIXES = (
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
)
QWEN_MODEL_TYPES = ("qwen2_5_vl_prumerge", "qwen2_vl_prumerge")


def checkpoint_layout(model_type: str) -> tuple[tuple, str]:
    """(module prefix -> checkpoint prefix pairs, the tied head's checkpoint name) of a model type's Hub folders."""
    if model_type in QWEN_MODEL_TYPES:
        return QWEN_CHECKPOINT_PREFIXES, "lm_head.weight"
    return CHECKPOINT_PREFIXES, TIED_HEAD


def checkpoint_key(module_key: str, model_type: str) -> str:
    """The checkpoint name of a PruMerge model's state-dict entry: llava-hf's layout, or Qwen-VL's own."""
    prefixes, _ = checkpoint_layout(model_type)
    for module_prefix, checkpoint_prefix in prefixes:
        if module_key.startswith(module_prefix):
            return checkpoint_prefix + module_key[len(module_prefix) :]
    raise UsageError(f"{module_key} is not a {model_type} parameter name (no checkpoint name for it)")


def _head_is_tied(model: torch.nn.Module) -> bool:
    return model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def write_weights(model: torch.nn.Module, folder: Path, max_shard_size: int | str) -> None:
    """Shards `model-0000i-of-0000n.safetensors` and their index, always an index (even for one shard)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            raise UsageError(
                f"{name} is offloaded (on the meta device); load the model without disk offloading "
                "(no device_map offload) before exporting it"
            )
        state[checkpoint_key(name, model.config.model_type)] = tensor
    if _head_is_tied(model):
        state.pop(checkpoint_layout(model.config.model_type)[1])  # re-tied on load from tie_word_embeddings
    save_torch_state_dict(state, folder, max_shard_size=max_shard_size)
    single = folder / "model.safetensors"
    if single.is_file():
        header = read_safetensors_header(single)
        single.rename(folder / SINGLE_SHARD)
        total_size = sum(end - start for start, end in (entry["data_offsets"] for entry in header.values()))
        index = {"metadata": {"total_size": total_size}, "weight_map": dict.fromkeys(header, SINGLE_SHARD)}
        write_json(folder / INDEX_FILE, index)
    # safetensors creates shards owner-only (0600); give them the mode of the other files (the umask's).
    ordinary_mode = (folder / INDEX_FILE).stat().st_mode & 0o777
    for shard in folder.glob("*.safetensors"):
        shard.chmod(ordinary_mode)


def weight_problems(folder: Path, config) -> list[str]:
    """What is wrong with the shards and index; with a config, also which weights it needs are absent or misshapen."""
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        return [f"{INDEX_FILE} is missing (weights must be sharded safetensors with an index)"]
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = set(weight_map.values())
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"{INDEX_FILE} is not a safetensors index ({error!r})"]
    problems = []
    shapes = {}
    for shard in sorted(shards):
        indexed = {name for name, file in weight_map.items() if file == shard}
        if not (folder / shard).is_file():
            problems.append(f"shard {shard} (listed in {INDEX_FILE}) is missing")
            continue
        try:
            header = read_safetensors_header(folder / shard)
        except (OSError, ValueError) as error:
            problems.append(f"shard {shard} is unreadable: {error}")
            continue
        if set(header) != indexed:
            problems.append(
                f"shard {shard} does not match {INDEX_FILE}: not indexed {sorted(set(header) - indexed)[:3]}, "
                f"indexed but absent {sorted(indexed - set(header))[:3]}"
            )
        shapes.update({name: tuple(entry["shape"]) for name, entry in header.items()})
    unindexed = sorted(path.name for path in folder.glob("*.safetensors") if path.name not in shards)
    if unindexed:
        problems.append(f"safetensors files not in {INDEX_FILE}: {unindexed}")
    if config is not None and not problems:
        problems += _coverage_problems(shapes, config)
    return problems


def _coverage_problems(shapes: dict[str, tuple], config) -> list[str]:
    """Every weight the config's model needs is in the shards, in its shape (the model is built on the meta device)."""
    with init_empty_weights():
        skeleton = architecture_for(config.model_type).load("head_class")(config)
    expected = {
        checkpoint_key(name, config.model_type): tuple(tensor.shape)
        for name, tensor in skeleton.state_dict().items()
    }
    if getattr(config.text_config, "tie_word_embeddings", False):
        expected.pop(checkpoint_layout(config.model_type)[1], None)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [
        f"{name} {shapes[name]} (config needs {expected[name]})"
        for name in sorted(set(expected) & set(shapes))
        if shapes[name] != expected[name]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) the config needs are in no shard, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) in the shards fit no parameter, e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} weight(s) have the wrong shape, e.g. {wrong[:3]}")
    return problems


def dtype_name(model: torch.nn.Module) -> str:
    """The `dtype` string config.json records (e.g. "float16")."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")
