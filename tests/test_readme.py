"""Every ```bash and ```python block of README.md and of each docs/*.md page runs, as a reader would run it.

Each page is one test case: its blocks run in order, in a scratch copy of the repository of its own, so
each page is self-contained (a block that needs an earlier output, such as an `out/tiny-inputs` folder,
has it made on the same page). A block runs on one page only: heavy commands (demo, train-mini, eval,
bench) are not repeated across pages. README.md's blocks run under both transformers majors, the docs
pages' under 5.x only (their commands are the same code under either, which the suite tests under both).

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
- `org/video-llava-prumerge-7b`, `org/llava-next-prumerge-7b` and `org/llava-onevision-prumerge-7b` become
  the folders `llava-prumerge export --tiny --arch video-llava` / `--arch llava-next` /
  `--arch llava-onevision` write, and `org/qwen2.5-vl-prumerge-7b` the one `--arch qwen2.5-vl` writes.
- A python block whose first line is `# needs torchvision ...` runs with the torchvision overlay of this
  interpreter's environment (`<venv>-vision`, see scripts/setup_vision_overlay.sh), which scripts/test.sh
  builds; the test fails if it is missing.
- A block whose first line is `# needs vLLM ...` runs only in an environment with vLLM (the one
  scripts/setup_vllm_env.sh builds, where scripts/test.sh runs `test_every_vllm_readme_block_runs`), and is
  left out elsewhere; there port 8000 becomes a free port. Those blocks serve the folders the page's own
  `# needs vLLM` blocks write (the tiny stand-ins have a text head size vLLM's CPU build runs), no stand-in.
- Only ```bash and ```python blocks run; ```text marks output, or commands shown but not run. Any other fence
  fails the test.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers

from llava_prumerge.cli import main

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "org/llava-prumerge-7b"
VIDEO_HUB_ID = "org/video-llava-prumerge-7b"
NEXT_HUB_ID = "org/llava-next-prumerge-7b"
ONEVISION_HUB_ID = "org/llava-onevision-prumerge-7b"
QWEN_HUB_ID = "org/qwen2.5-vl-prumerge-7b"
STOCK_HUB_ID = "llava-hf/llava-1.5-7b-hf"
VLLM_PORT = "8000"
NEEDS_VLLM = "# needs vLLM"
RUN = ("bash", "python")
NOT_RUN = ("text",)
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
ENVIRONMENT_SCRIPT = re.compile(r"\bbash (scripts/(?:setup_env|setup_lmms_env|test)\.sh)(?:[ \t]+[^\s;&|]+)*")
VENV_BIN = re.compile(r"\.venvs/[\w.-]+/bin/")


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, code) of every fenced block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def runnable_blocks(page: Path, needs_vllm: bool) -> list[tuple[int, str, str]]:
    """The page's ```bash and ```python blocks that need vLLM, or those that do not."""
    return [
        block
        for block in readme_blocks(page.read_text())
        if block[1] in RUN and block[2].startswith(NEEDS_VLLM) == needs_vllm
    ]


def pages_with_blocks(needs_vllm: bool) -> list:
    return [pytest.param(page, id=page_name(page)) for page in PAGES if runnable_blocks(page, needs_vllm)]


def adapted(code: str, checkpoints: dict[str, Path]) -> str:
    bin_dir = Path(sys.executable).parent
    code = VENV_BIN.sub(f"{bin_dir}/", ENVIRONMENT_SCRIPT.sub(r"bash -n \1", code))
    for hub_id, folder in checkpoints.items():
        code = code.replace(hub_id, str(folder))
    return code


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Local stand-ins for the pages' Hub ids: a PruMerge Hub folder of each architecture and a stock LLaVA folder."""
    folder = tmp_path_factory.mktemp("hub")
    main(["export", "--tiny", "--out", str(folder / "tiny-llava-prumerge")])
    main(["export", "--tiny", "--arch", "video-llava", "--out", str(folder / "tiny-video-llava-prumerge")])
    main(["export", "--tiny", "--arch", "llava-next", "--out", str(folder / "tiny-llava-next-prumerge")])
    main(
        [
            "export",
            "--tiny",
            "--arch",
            "llava-onevision",
            "--out",
            str(folder / "tiny-llava-onevision-prumerge"),
        ]
    )
    main(["export", "--tiny", "--arch", "qwen2.5-vl", "--out", str(folder / "tiny-qwen2.5-vl-prumerge")])
    main(["tiny-inputs", str(folder / "inputs")])
    return {
        HUB_ID: folder / "tiny-llava-prumerge",
        VIDEO_HUB_ID: folder / "tiny-video-llava-prumerge",
        NEXT_HUB_ID: folder / "tiny-llava-next-prumerge",
        ONEVISION_HUB_ID: folder / "tiny-llava-onevision-prumerge",
        QWEN_HUB_ID: folder / "tiny-qwen2.5-vl-prumerge",
        STOCK_HUB_ID: folder / "inputs" / "llava-hf",
    }


def python_for(code: str) -> str:
    """This interpreter, or its environment's torchvision overlay for blocks that say they need torchvision."""
    if not code.startswith("# needs torchvision"):
        return sys.executable
    overlay = Path(sys.prefix).with_name(Path(sys.prefix).name + "-vision") / "bin" / "python"
    assert overlay.is_file(), f"{overlay} is missing: build it with scripts/setup_vision_overlay.sh"
    return str(overlay)


@pytest.fixture
def scratch_repo(tmp_path):
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
    ignored = [pattern for pattern in ignored if pattern and not pattern.startswith("#")]
    return Path(shutil.copytree(ROOT, tmp_path / "repo", ignore=shutil.ignore_patterns(".git", *ignored)))


@pytest.mark.parametrize("page", [pytest.param(page, id=page_name(page)) for page in PAGES])
def test_every_fence_is_a_block_in_a_known_language(page):
    text = page.read_text()
    blocks = readme_blocks(text)
    fences = [line for line in text.splitlines() if line.startswith("```")]
    assert len(fences) == 2 * len(blocks), f"an unmatched ``` fence in {page_name(page)}"
    unknown = [(line, lang) for line, lang, _ in blocks if lang not in RUN + NOT_RUN]
    assert not unknown, (
        f"{page_name(page)} blocks at (line, language) {unknown}: use ```bash, ```python or ```text"
    )
    runnable_fences = [line for line in text.splitlines() if line.startswith(("```bash", "```python"))]
    assert len(runnable_blocks(page, False)) + len(runnable_blocks(page, True)) == len(runnable_fences)


def test_no_block_is_on_two_pages():
    """A block runs once in the suite: the same code on two pages (or twice on one) would run twice."""
    seen: dict[str, str] = {}
    repeated = []
    for page in PAGES:
        for line, language, code in readme_blocks(page.read_text()):
            if language in RUN:
                where = f"{page_name(page)} line {line}"
                if code in seen:
                    repeated.append(f"{where} repeats {seen[code]}")
                seen.setdefault(code, where)
    assert not repeated, "\n".join(repeated)
    assert any(runnable_blocks(page, True) for page in PAGES) and runnable_blocks(PAGES[0], False)


def run_blocks(page: Path, blocks, scratch_repo, checkpoints: dict[str, Path]) -> list[str]:
    """Run a page's (line, language, code) blocks in order as the conventions say; the failures, described."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    failures = []
    for line, language, code in blocks:
        code = adapted(code, checkpoints)
        command = (
            ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [python_for(code), "-c", code]
        )
        started = time.perf_counter()
        result = subprocess.run(
            command, cwd=scratch_repo, env=env, capture_output=True, text=True, timeout=600
        )
        where = f"{page_name(page)} line {line} ({language})"
        print(f"{where}: {time.perf_counter() - started:.1f} s")
        if result.returncode:
            output = (result.stdout + result.stderr)[-3000:]
            failures.append(f"{where}, exit {result.returncode}:\n{code}\n{output}")
    return failures


@pytest.mark.parametrize("page", pages_with_blocks(needs_vllm=False))
def test_every_readme_block_runs(page, scratch_repo, tiny_checkpoints):
    if transformers.__version__.startswith("4.") and page.name != "README.md":
        # The pages' blocks are the commands' (the CLI is the same code under either major, which the
        # suite tests under both); run under the latest major, they keep the 4.57 suite half as long.
        pytest.skip("the docs pages' blocks run under transformers 5 (README.md's under both)")
    failures = run_blocks(page, runnable_blocks(page, needs_vllm=False), scratch_repo, tiny_checkpoints)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("page", pages_with_blocks(needs_vllm=True))
def test_every_vllm_readme_block_runs(page, vllm, scratch_repo):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    blocks = [
        (line, language, code.replace(VLLM_PORT, port))
        for line, language, code in runnable_blocks(page, needs_vllm=True)
    ]
    failures = run_blocks(page, blocks, scratch_repo, {})
    assert not failures, "\n\n".join(failures)


def test_the_cli_reference_renders_every_subcommand():
    """The docs' command-line page is rendered from the parsers (docs/hooks/cli_reference.py) without torch."""
    from llava_prumerge.cli import SUBCOMMANDS

    code = (
        "import sys; sys.path.insert(0, 'docs/hooks'); import cli_reference; print(cli_reference.reference()); "
        "assert 'torch' not in sys.modules, 'the CLI reference imported torch'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    for name in SUBCOMMANDS:
        assert f"## `{name}` {{#{name}}}" in result.stdout
        assert f"usage: llava-prumerge {name} " in result.stdout
