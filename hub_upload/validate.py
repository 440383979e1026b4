"""Check that a folder is a complete PruMerge Hub folder, without importing its remote code.

Run by the export before it renames its temporary folder into place, and by the upload before it
pushes anything: the config loads, the shards match the index and hold every weight the config
needs in the right shape, the remote code is exactly what this package writes and the only code
any `auto_map` names, links stay inside the folder, and the tokenizer and processor files are in
the layout both transformers majors read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard

from ..architectures import ARCHITECTURES, Architecture, architecture_for
from ..common.file_checks import json_shape_problem
from ..errors import InvalidHubFolder
from ..modeling.anyres import grid_pinpoints_problem
from .budget_processor import budget_processor_problems, names_budget_processor
from .compat import CHAT_TEMPLATE_FILE, MODEL_INPUT_NAMES, VIDEO_PROCESSOR_FILE
from .remote_code import defined_classes, remote_code_problems
from .weights import weight_problems

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def _load_json(folder: Path, name: str, problems: list[str]) -> dict | None:
    path = folder / name
    if not path.is_file():
        problems.append(f"{name} is missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        problems.append(f"{name} is not valid JSON ({error})")
        return None


def _config_problems(folder: Path) -> tuple[list[str], Architecture | None, object]:
    """Problems of config.json, the architecture it names, and the config (None when it does not load)."""
    problems = []
    raw = _load_json(folder, "config.json", problems)
    if raw is None:
        return problems, None, None
    arch = architecture_for(raw.get("model_type"))
    if arch is None or arch.model_type != raw.get("model_type"):
        known = sorted(a.model_type for a in ARCHITECTURES)
        problems.append(f"config.json has model_type {raw.get('model_type')!r}, not one of {known}")
        return problems, None, None
    auto_map = raw.get("auto_map") or {}
    for auto_class, target in arch.auto_map.items():
        if auto_map.get(auto_class) != target:
            problems.append(
                f"config.json auto_map[{auto_class!r}] is {auto_map.get(auto_class)!r}, not {target!r}"
            )
    text_config = raw.get("text_config") or {}
    if "rope_parameters" in text_config and "rope_theta" not in text_config:
        problems.append(
            "config.json text_config has rope_parameters but no rope_theta, which transformers 4.57 reads"
        )
    config_class = arch.load("config_class")
    try:
        config = config_class.from_pretrained(folder)
    except Exception as error:  # any failure to build the config makes the folder unloadable
        problems.append(f"config.json does not load as {config_class.__name__}: {error}")
        config = None
    pinpoints = getattr(config, "image_grid_pinpoints", None)  # AnyRes: what every forward lays images out by
    if pinpoints is not None:
        problem = grid_pinpoints_problem(pinpoints, config.vision_config.image_size)
        if problem is not None:
            problems.append(f"config.json {problem}")
    return problems, arch, config


def _processor_problems(folder: Path, arch: Architecture) -> list[str]:
    problems = []
    tokenizer_config = _load_json(folder, "tokenizer_config.json", problems) or {}
    _load_json(folder, "tokenizer.json", problems)
    if tokenizer_config.get("tokenizer_class") in (None, "TokenizersBackend"):
        problems.append(
            f"tokenizer_config.json has tokenizer_class {tokenizer_config.get('tokenizer_class')!r}, "
            "which transformers 4.57 cannot load (write PreTrainedTokenizerFast)"
        )
    if tokenizer_config and tokenizer_config.get("model_input_names") != MODEL_INPUT_NAMES:
        problems.append(
            f"tokenizer_config.json model_input_names must be {MODEL_INPUT_NAMES} (no token_type_ids)"
        )
    if isinstance(tokenizer_config.get("extra_special_tokens"), list):
        problems.append(
            "tokenizer_config.json has extra_special_tokens as a list, which transformers 4.57 rejects"
        )
    image_settings = _load_json(folder, "preprocessor_config.json", problems) or {}
    if image_settings and not str(image_settings.get("image_processor_type", "")).startswith(
        arch.image_processor_type
    ):
        problems.append(
            f"preprocessor_config.json has image_processor_type {image_settings.get('image_processor_type')!r}, "
            f"not {arch.image_processor_type}"
        )
    if arch.video_processor_type:
        video_settings = _load_json(folder, VIDEO_PROCESSOR_FILE, problems) or {}
        if video_settings and video_settings.get("video_processor_type") != arch.video_processor_type:
            problems.append(
                f"{VIDEO_PROCESSOR_FILE} video_processor_type must be {arch.video_processor_type}"
            )
    processor_settings = _load_json(folder, "processor_config.json", problems) or {}
    if processor_settings and names_budget_processor(arch, processor_settings):
        problems += budget_processor_problems(folder, arch, processor_settings)
    elif processor_settings and processor_settings.get("processor_class") != arch.processor_class:
        problems.append(f"processor_config.json processor_class must be {arch.processor_class}")
    if "image_processor" in processor_settings:
        problems.append(
            "processor_config.json nests the image processor (transformers 5 layout); 4.57 reads it only "
            "from preprocessor_config.json"
        )
    if not (folder / CHAT_TEMPLATE_FILE).is_file():
        problems.append(f"{CHAT_TEMPLATE_FILE} is missing")
    _load_json(folder, "generation_config.json", problems)
    return problems


def _model_card_problems(folder: Path) -> list[str]:
    if not (folder / "README.md").is_file():
        return ["README.md (the model card) is missing"]
    data = ModelCard.load(folder / "README.md").data
    wanted = {"pipeline_tag": "image-text-to-text", "library_name": "transformers"}
    return [
        f"README.md metadata {key} is {getattr(data, key, None)!r}, not {value!r}"
        for key, value in wanted.items()
        if getattr(data, key, None) != value
    ] + (["README.md metadata has no license"] if not data.license else [])


def _auto_map_targets(data) -> list:
    """Every value of every `auto_map` in a JSON document (nested ones included, as processors nest)."""
    if isinstance(data, list):
        return [target for item in data for target in _auto_map_targets(item)]
    if not isinstance(data, dict):
        return []
    targets = []
    for key, value in data.items():
        if key == "auto_map" and isinstance(value, dict):
            for entry in value.values():  # a tokenizer's entry is [slow, fast], either may be null
                targets += [t for t in entry if t is not None] if isinstance(entry, list) else [entry]
        else:
            targets += _auto_map_targets(value)
    return targets


def _auto_map_problems(folder: Path, files: list[Path]) -> list[str]:
    """`auto_map` in any config file (model, tokenizer, processors) may name only this folder's remote code.

    transformers imports what any of them names under `trust_remote_code=True`, so an entry pointing at
    another file or repository would run code no check has seen.
    """
    problems = []
    for path in (path for path in files if path.suffix == ".json"):
        try:
            data = json.loads((folder / path).read_text(encoding="utf-8"))
        except ValueError as error:
            problems.append(f"{path} is not valid JSON ({error})")
            continue
        for target in _auto_map_targets(data):
            module, _, class_name = str(target).rpartition(".")
            if not isinstance(target, str) or "--" in target or "/" in module or not module:
                problems.append(
                    f"{path} auto_map names {target!r}: only classes of this folder's remote code may be named"
                )
            elif class_name not in defined_classes(folder / f"{module}.py"):
                problems.append(f"{path} auto_map names {target}, which {module}.py does not define")
    return problems


def _is_hub_cache_blob(target: Path) -> bool:
    """Whether `target` is a file of a Hugging Face cache's blob store (`models--org--name/blobs/<hash>`)."""
    return target.parent.name == "blobs" and target.parent.parent.name.startswith("models--")


def hub_folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The files a push uploads (relative, sorted) and the problems of the folder's links.

    Hidden files and folders (`.env`, `.cache/`) are never pushed. A link may point inside the folder
    or into a Hugging Face cache's blob store (a downloaded snapshot is laid out so); a link elsewhere,
    a broken one or one to a folder is a problem, as it would push files from outside the folder.
    """
    root = folder.resolve()
    files, problems = [], []
    for directory, subfolders, names in os.walk(folder):
        here = Path(directory)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in list(subfolders):
            if (here / name).is_symlink():
                subfolders.remove(name)
                problems.append(
                    f"{(here / name).relative_to(folder)} is a link to a folder; copy the files in"
                )
        for name in names:
            path = here / name
            relative = path.relative_to(folder)
            if name.startswith("."):
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.is_file():
                    problems.append(f"{relative} is a broken link or not a file")
                    continue
                if not (target.is_relative_to(root) or _is_hub_cache_blob(target)):
                    problems.append(
                        f"{relative} links to {target}, outside the folder; copy the file in (links may point "
                        "only inside the folder or into a Hugging Face cache's blobs)"
                    )
                    continue
            elif not path.is_file():
                problems.append(f"{relative} is not a regular file")
                continue
            files.append(relative)
    return sorted(files), problems


def hidden_files(folder: Path) -> list[Path]:
    """Hidden files and folders at any depth, which are never pushed (listed so nothing goes unsaid)."""
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob(".*")
        if not any(part.startswith(".") for part in path.relative_to(folder).parts[:-1])
    )


def validate_hub_folder(folder: Path | str) -> list[Path]:
    """Raise InvalidHubFolder listing every problem; otherwise return the folder's files (relative)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidHubFolder(
            f"{folder} is not a folder; export one with `llava-prumerge export` or `convert`"
        )
    files, problems = hub_folder_files(folder)
    problems += [
        f"{path} is a pickle-format file; weights must be safetensors only (remove it)"
        for path in files
        if path.suffix in PICKLE_SUFFIXES
    ]
    if problem := json_shape_problem(folder):  # what the checks below would trip over
        raise InvalidHubFolder(f"{folder} is not a valid PruMerge Hub folder: {problem}; export it again")
    config_problems, arch, config = _config_problems(folder)
    problems += config_problems
    problems += weight_problems(folder, config)
    problems += (
        remote_code_problems(folder, arch, files) + _processor_problems(folder, arch)
        if arch is not None
        else []
    )
    problems += _auto_map_problems(folder, files)
    problems += _model_card_problems(folder)
    problems = list(dict.fromkeys(problems))  # a broken JSON file is found by two checks
    if problems:
        raise InvalidHubFolder(
            f"{folder} is not a valid PruMerge Hub folder:\n  - "
            + "\n  - ".join(problems)
            + "\nExport it again with `llava-prumerge export` or `llava-prumerge convert` (with --overwrite)."
        )
    return files
