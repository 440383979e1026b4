"""Every ```bash and ```python block of README.md runs, in order, as a reader would run it.

Conventions, so that the blocks run inside the test suite:
- Blocks run in a scratch copy of the repository (without what .gitignore ignores), so their outputs
  land there; bash blocks with `bash -euo pipefail`, python blocks with this interpreter.
- `bash scripts/setup_env.sh ...`, `bash scripts/setup_lmms_env.sh ...` and `bash scripts/test.sh ...`
  (up to the end of the command) become
  `bash -n scripts/<script>.sh`: the script must exist and parse, but environments are not rebuilt
  and the suite does not run itself.
- `.venvs/<name>/bin/` becomes this interpreter's bin folder, which also comes first on PATH.
- The Hub id `org/llava-prumerge-7b` becomes the folder `llava-prumerge export --tiny` writes,
  `llava-hf/llava-1.5-7b-hf` the stock LLaVA folder `llava-prumerge tiny-inputs` writes, and the Hub
  is offline (HF_HUB_OFFLINE=1).
- Only ```bash and ```python blocks run; ```text marks output. Any other fence fails the test.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava_prumerge.cli import main

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "org/llava-prumerge-7b"
STOCK_HUB_ID = "llava-hf/llava-1.5-7b-hf"
RUN = ("bash", "python")
NOT_RUN = ("text",)
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
ENVIRONMENT_SCRIPT = re.compile(r"\bbash (scripts/(?:setup_env|setup_lmms_env|test)\.sh)(?:[ \t]+[^\s;&|]+)*")
VENV_BIN = re.compile(r"\.venvs/[\w.-]+/bin/")


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, code) of every fenced block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def adapted(code: str, checkpoints: dict[str, Path]) -> str:
    bin_dir = Path(sys.executable).parent
    code = VENV_BIN.sub(f"{bin_dir}/", ENVIRONMENT_SCRIPT.sub(r"bash -n \1", code))
    for hub_id, folder in checkpoints.items():
        code = code.replace(hub_id, str(folder))
    return code


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Local stand-ins for the README's Hub ids: a PruMerge Hub folder and a stock LLaVA folder."""
    folder = tmp_path_factory.mktemp("hub")
    main(["export", "--tiny", "--out", str(folder / "tiny-llava-prumerge")])
    main(["tiny-inputs", str(folder / "inputs")])
    return {HUB_ID: folder / "tiny-llava-prumerge", STOCK_HUB_ID: folder / "inputs" / "llava-hf"}


@pytest.fixture
def scratch_repo(tmp_path):
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
    ignored = [pattern for pattern in ignored if pattern and not pattern.startswith("#")]
    return Path(shutil.copytree(ROOT, tmp_path / "repo", ignore=shutil.ignore_patterns(".git", *ignored)))


def test_every_fence_is_a_block_in_a_known_language():
    text = (ROOT / "README.md").read_text()
    blocks = readme_blocks(text)
    fences = [line for line in text.splitlines() if line.startswith("```")]
    assert len(fences) == 2 * len(blocks), "an unmatched ``` fence in README.md"
    unknown = [(line, lang) for line, lang, _ in blocks if lang not in RUN + NOT_RUN]
    assert not unknown, f"README.md blocks at (line, language) {unknown}: use ```bash, ```python or ```text"


def test_every_readme_block_runs(scratch_repo, tiny_checkpoints):
    text = (ROOT / "README.md").read_text()
    blocks = [block for block in readme_blocks(text) if block[1] in RUN]
    runnable_fences = [line for line in text.splitlines() if line.startswith(("```bash", "```python"))]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    failures, ran = [], 0
    for line, language, code in blocks:
        code = adapted(code, tiny_checkpoints)
        command = (
            ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        )
        started = time.perf_counter()
        result = subprocess.run(
            command, cwd=scratch_repo, env=env, capture_output=True, text=True, timeout=600
        )
        print(f"README.md line {line} ({language}): {time.perf_counter() - started:.1f} s")
        ran += 1
        if result.returncode:
            output = (result.stdout + result.stderr)[-3000:]
            failures.append(
                f"README.md line {line} ({language}), exit {result.returncode}:\n{code}\n{output}"
            )
    assert not failures, "\n\n".join(failures)
    assert ran == len(runnable_fences) > 0, f"ran {ran} of the {len(runnable_fences)} bash/python blocks"
