"""The processor files of a fixed-budget Hub folder: `<image>` expands to exactly the tokens the LLM sees.

With a fixed budget (`adaptive=False`, or a baseline) every image reaches the language model as the
same number of tokens, so the folder's processor writes that many placeholders instead of one per
patch (the architecture's `budget_processor`, as remote code named by `processor_config.json`'s
`auto_map`; with this package installed, AutoProcessor finds it by name). Prompts then have the
length vLLM gives them. Other folders keep the stock processor.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..architectures import Architecture
from ..errors import UnservableBudgetError
from ..serving.budget import image_token_count
from .compat import write_json
from .remote_code import budget_processor_code, defined_classes, remote_file_name


def _module_and_class(arch: Architecture) -> tuple[str, str]:
    module, _, class_name = arch.budget_processor.rpartition(".")
    return module, class_name


def has_budget_processor(arch: Architecture, config) -> bool:
    """Whether `config`'s folder gets the fixed-budget processor: it reduces, and by the same count for every image
    (at native resolution: every image larger than the budget)."""
    if not arch.budget_processor or not config.reduction_settings.reduces:
        return False
    try:
        image_token_count(config)
    except UnservableBudgetError:
        return False
    return True


def write_budget_processor(folder: Path, arch: Architecture, config) -> None:
    """The processor's remote code, and `processor_config.json` naming it with the budget (stock files already written)."""
    module, class_name = _module_and_class(arch)
    file_name = remote_file_name(module)
    for name, text in budget_processor_code(arch).items():
        (folder / name).write_text(text, encoding="utf-8")
    settings = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    write_json(
        folder / "processor_config.json",
        {
            **settings,
            "processor_class": class_name,
            "num_image_tokens": image_token_count(config),
            "auto_map": {"AutoProcessor": f"{file_name.removesuffix('.py')}.{class_name}"},
        },
    )


def names_budget_processor(arch: Architecture, processor_settings: dict) -> bool:
    """Whether a folder's `processor_config.json` names the architecture's fixed-budget processor."""
    return (
        bool(arch.budget_processor)
        and processor_settings.get("processor_class") == _module_and_class(arch)[1]
    )


def budget_processor_problems(folder: Path, arch: Architecture, processor_settings: dict) -> list[str]:
    """What is wrong with a `processor_config.json` that names the fixed-budget processor, and with its code."""
    module, class_name = _module_and_class(arch)
    file_name = remote_file_name(module)
    problems = []
    if not isinstance(processor_settings.get("num_image_tokens"), int):
        problems.append(f"processor_config.json names {class_name} but has no integer num_image_tokens")
    target = f"{file_name.removesuffix('.py')}.{class_name}"
    if (processor_settings.get("auto_map") or {}).get("AutoProcessor") != target:
        problems.append(f"processor_config.json auto_map['AutoProcessor'] must be {target!r}")
    if class_name not in defined_classes(folder / file_name):  # its bytes are checked with the other code
        problems.append(
            f"{file_name} is missing or does not define {class_name} (remote code of the processor)"
        )
    return problems
