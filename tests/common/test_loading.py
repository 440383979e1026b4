"""Checkpoints that cannot be found are one clear line at the command line, offline included."""

import os
import subprocess
import sys

import pytest
from PIL import Image


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llava_prumerge", *argv],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],  # offline mode; a Hub that refuses
    ids=["offline mode", "hub unreachable"],
)
def test_a_hub_id_that_cannot_be_reached_is_one_line_naming_the_fix(tmp_path, env):
    run = run_cli(
        "demo",
        "--model",
        "org/llava-prumerge-7b",
        "--out",
        str(tmp_path / "out"),
        HF_HOME=str(tmp_path),
        **env,
    )
    assert run.returncode == 2
    (error,) = [line for line in run.stderr.splitlines() if line.strip()]
    assert error == (
        "llava-prumerge demo: error: org/llava-prumerge-7b is not a local folder and the Hugging Face Hub is "
        "unreachable (offline?); pass a local checkpoint folder, e.g. one written by `llava-prumerge export`"
    )


def test_a_missing_folder_or_a_file_is_named(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    run = run_cli("visualize", str(tmp_path / "image.png"), "--model", str(tmp_path / "missing"))
    assert f"error: No checkpoint folder at {tmp_path / 'missing'}" in run.stderr
    (tmp_path / "weights.safetensors").write_bytes(b"")
    run = run_cli("demo", "--model", str(tmp_path / "weights.safetensors"), "--out", str(tmp_path / "out"))
    assert (
        "is a file; pass a checkpoint folder or a Hub model id" in run.stderr
        and "Traceback" not in run.stderr
    )


def damage(folder, kind: str):
    """`folder` (a tiny export) damaged as a half-copied or hand-edited checkpoint is; the file to name."""
    if kind == "no config":
        (folder / "config.json").unlink()
        return "has no config.json"
    edits = {
        "config is a list": ("config.json", "[]"),
        "text_config is a string": ("config.json", None),
        "tokenizer cut short": ("tokenizer.json", None),
        "preprocessor is a list": ("preprocessor_config.json", "[]"),
        "generation config is a list": ("generation_config.json", "[]"),
        "empty chat template": ("chat_template.jinja", ""),
    }
    name, text = edits[kind]
    path = folder / name
    if kind == "text_config is a string":
        import json

        text = json.dumps({**json.loads(path.read_text()), "text_config": "oops"})
    elif text is None:
        text = path.read_text()[: path.stat().st_size // 2]
    path.write_text(text)
    return name


KINDS = ["no config", "config is a list", "text_config is a string", "tokenizer cut short",
         "preprocessor is a list", "generation config is a list", "empty chat template"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from llava_prumerge.cli import main

    folder = tmp_path_factory.mktemp("tiny") / "tiny-llava"
    main(["export", "--tiny", "--out", str(folder)])
    return folder


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_folder_is_named_before_anything_loads(tiny_folder, tmp_path, kind):
    import shutil

    from llava_prumerge.common.loading import check_checkpoint_source
    from llava_prumerge.errors import UsageError

    folder = shutil.copytree(tiny_folder, tmp_path / "copy")
    named = damage(folder, kind)
    with pytest.raises(UsageError, match=named):
        check_checkpoint_source(str(folder))


@pytest.mark.parametrize(
    "command", [["eval", "--limit", "1", "--no-budgets"], ["bench"], ["demo", "--out", "d"]]
)
def test_commands_given_a_damaged_folder_end_in_one_line(tiny_folder, tmp_path, command):
    import shutil

    folder = shutil.copytree(tiny_folder, tmp_path / "copy")
    damage(folder, "preprocessor is a list")
    result = run_cli(*command, "--model", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "preprocessor_config.json holds a JSON list" in result.stderr.splitlines()[-1]
