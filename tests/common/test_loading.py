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
