"""Checks of the files commands read, before anything loads: a file cut short, damaged or of the wrong
kind is named in one line (a parser's traceback names nothing). Standard library only."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"


def read_safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets), checked against its size."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > path.stat().st_size:
            raise ValueError("its header length exceeds the file size (not a safetensors file, or truncated)")
        header = json.loads(file.read(header_size))
    metadata = header.pop("__metadata__", None) or {}
    if metadata.get("format") != "pt":
        raise ValueError(f"metadata format is {metadata.get('format')!r}, not 'pt' (transformers refuses it)")
    data_size = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_size + data_size != path.stat().st_size:
        raise ValueError(
            f"{path.stat().st_size} bytes on disk but its header describes {8 + header_size + data_size} (truncated?)"
        )
    return header


def first_unreadable(paths) -> str | None:
    """ "PATH is unreadable: why" for the first safetensors file among `paths` whose header and size
    disagree (an interrupted download or copy), None when all read."""
    for path in paths:
        try:
            read_safetensors_header(path)
        except (ValueError, OSError) as error:
            return f"{path} is unreadable: {error}"
    return None


def torch_file_problem(path: Path) -> str | None:
    """ "PATH is unreadable: why" for a `torch.save` file (a zip archive) cut short or with a damaged member
    (its CRC checked: torch.load would read a flipped byte without a word), None when it reads."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"{path} is unreadable: not a whole torch.save file ({error})"
    return None if damaged is None else f"{path} is unreadable: its member {damaged} is damaged"


def damaged_download_problem(folder: Path) -> str | None:
    """What is damaged in a downloaded checkpoint folder, named (None when nothing): a JSON file that does not
    parse, a shard its index lists that is absent, or a safetensors file whose header and size disagree; an
    interrupted download leaves these, and loading them would end in a parser's traceback."""
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return f"{path} is not valid JSON (cut short?): {error}"
        if path.name == INDEX_FILE:
            shards = sorted(set((data.get("weight_map") or {}).values()) if isinstance(data, dict) else [])
            if absent := [shard for shard in shards if not (folder / shard).is_file()]:
                return f"{path} lists shard(s) that are absent: {absent[:3]}"
    return first_unreadable(sorted(folder.glob("*.safetensors")))


# Files a checkpoint folder may hold that loaders read as JSON objects (a list or a string there is a
# traceback deep inside transformers or PEFT).
JSON_OBJECT_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "adapter_config.json",
    INDEX_FILE,
)


def checkpoint_folder_problem(folder: Path) -> str | None:
    """What keeps a checkpoint folder from loading, and the fix (None when nothing is seen): no config.json, or
    one of `damaged_file_problem`'s."""
    if not (folder / "config.json").is_file():
        return (
            f"{folder} has no config.json, so it is no checkpoint folder: pass one written by "
            "`llava-prumerge export`, or a download of a llava-hf model"
        )
    if problem := damaged_file_problem(folder):
        return f"{problem}; export or download the checkpoint again"
    return None


def damaged_file_problem(folder: Path) -> str | None:
    """A damaged download (see `damaged_download_problem`) or a file of the wrong shape (see
    `json_shape_problem`), named."""
    return damaged_download_problem(folder) or json_shape_problem(folder)


def json_shape_problem(folder: Path) -> str | None:
    """A JSON file that holds something other than the object its loader reads, nested configs that are not
    objects, or an empty chat template, named (files that do not parse are `damaged_download_problem`'s)."""
    for name in JSON_OBJECT_FILES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            return f"{folder / name} holds a JSON {type(data).__name__}, not the object its loader reads"
        for key in ("text_config", "vision_config") if name == "config.json" else ():
            if data.get(key) is not None and not isinstance(data[key], dict):
                return f"{folder / name}: {key} is {data[key]!r}, not a config (a JSON object)"
    template = folder / "chat_template.jinja"
    if template.is_file() and not template.read_text(encoding="utf-8").strip():
        return f"{template} is empty; remove it, or write the chat template into it"
    return None
