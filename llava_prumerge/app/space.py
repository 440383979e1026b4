"""The Hugging Face Space folder `llava-prumerge space` writes: app.py, requirements.txt and README.md.

The Space installs the app from its requirements.txt: this llava-prumerge release with the `app` extra,
from PyPI, and the Gradio release the app is tested with (scripts/setup_app_env.sh builds the test
environment from the same file, with llava-prumerge from a wheel of the checkout).
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..common.output_folders import written_whole
from ..errors import UsageError

GRADIO_VERSION = "6.31.0"  # the Space's sdk_version, and the release the test environment installs
LICENSE = "apache-2.0"  # the package's (the model's own license is on its card)


def space_model_id(model: str) -> str:
    """`model` as the Space loads it: an existing local folder as its absolute path, else a valid Hub id."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as error:
        raise UsageError(
            f"--model {model!r} is neither a folder nor a Hub repo id ({error}); pass NAME or ORG/NAME"
        ) from None
    return model


def space_requirements() -> str:
    return f"llava-prumerge[app]=={__version__}\ngradio=={GRADIO_VERSION}\n"


def space_app(model_id: str) -> str:
    return (
        f'"""A Hugging Face Space: LLaVA-PruMerge on {model_id}, written by `llava-prumerge space` '
        f'(llava-prumerge {__version__})."""\n\n'
        "from llava_prumerge.app.page import serve\n\n"
        f"serve({model_id!r})\n"
    )


def space_readme(model_id: str) -> str:
    return (
        "---\n"
        "title: LLaVA-PruMerge\n"
        "emoji: 🧩\n"
        "colorFrom: indigo\n"
        "colorTo: green\n"
        "sdk: gradio\n"
        f"sdk_version: {GRADIO_VERSION}\n"
        "app_file: app.py\n"
        "pinned: false\n"
        f"license: {LICENSE}\n"
        "models:\n"
        f"  - {model_id}\n"
        "---\n\n"
        f"# LLaVA-PruMerge on {model_id}\n\n"
        "Upload an image, ask a question, and see which visual tokens each method (none, PruMerge, PruMerge+, "
        "fixed budgets) lets through to the language model, what each answers and what each stage costs.\n"
        f"This is `llava-prumerge app --model {model_id}` (llava-prumerge {__version__}, installed from "
        "requirements.txt).\n"
    )


def write_space(model: str, out: Path, overwrite: bool = False) -> Path:
    """Write the Space folder `out` whole (or not at all); an existing one is refused unless `overwrite`."""
    model_id = space_model_id(model)
    with written_whole(Path(out), overwrite) as staging:
        (staging / "app.py").write_text(space_app(model_id))
        (staging / "requirements.txt").write_text(space_requirements())
        (staging / "README.md").write_text(space_readme(model_id), encoding="utf-8")
    return Path(out)
