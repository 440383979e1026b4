"""Run a script in fresh interpreters of each transformers major, offline, as a user's machine would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The interpreters cross-version tests use: tf4 then tf5 (set by scripts/test.sh), else this one.
TEST_PYTHONS = os.environ.get("PRUMERGE_TEST_PYTHONS", sys.executable).split(":")
# Their torchvision overlays (scripts/setup_vision_overlay.sh), for video and OneVision / Qwen processors; none
# unless scripts/test.sh (or the caller) names them.
VISION_PYTHONS = [
    python for python in os.environ.get("PRUMERGE_TEST_VISION_PYTHONS", "").split(":") if python
]


# The opening of a script that loads a Hub folder as a user's machine would, without this package: the spec
# (JSON, first argument) names the folder; `auto` is the image-text Auto class of the installed major.
REMOTE_PRELUDE = r"""
import sys
sys.modules["llava_prumerge"] = None  # a user's machine: this package is not installed
import json
import torch
import transformers

def visible_log_probs(model, inputs):  # [visible positions, vocab]: what both sides must agree on
    with torch.no_grad():
        out = model(**inputs)
    return out.logits[out.attention_mask.bool()].float().log_softmax(-1)


spec = json.loads(open(sys.argv[1]).read())
folder = spec["folder"]
major = int(transformers.__version__.split(".")[0])
auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
"""


def run_offline(script: str, args: list[str], folder: Path, timeout: int = 300) -> dict[str, str]:
    """Write `script` into `folder` and run it there under every TEST_PYTHONS interpreter at once, with
    the Hub offline and an empty HF_HOME; returns each interpreter's output, after asserting it exited 0."""
    (folder / "script.py").write_text(script)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(folder / "hf_home"),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    runs = {
        python: subprocess.Popen(
            [python, "script.py", *args],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for python in TEST_PYTHONS
    }
    outputs = {}
    for python, process in runs.items():
        outputs[python], _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"{python} failed:\n{outputs[python][-3000:]}"
    return outputs
