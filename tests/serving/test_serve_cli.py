"""`llava-prumerge serve`: what it refuses (one line, exit status 2) and the vLLM server command it runs."""

import importlib.util
import sys

import pytest

from llava_prumerge.cli import main

HAS_VLLM = importlib.util.find_spec("vllm") is not None
FIXED = ["--token-reduction", "prumerge_plus", "--no-adaptive", "--num-visual-tokens", "16"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    main(["export", "--tiny", "--out", str(root / "adaptive")])
    main(["export", "--tiny", *FIXED, "--out", str(root / "fixed")])
    main(["tiny-inputs", str(root / "inputs")])
    return root


def serve_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *map(str, argv)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


def test_an_adaptive_folder_is_refused_with_the_budgets_to_use(folders, capsys):
    err = serve_error(capsys, folders / "adaptive", "--port", "8001")
    assert err.startswith(
        f"llava-prumerge serve: error: {folders / 'adaptive'}: token_reduction='prumerge' with adaptive=True"
    )
    assert "64, 128, 192" in err and "--no-adaptive --num-visual-tokens 64" in err


def test_folders_it_cannot_serve_are_refused(folders, capsys):
    assert "is not a folder" in serve_error(capsys, folders / "missing")
    assert "holds a llava model (LlavaForConditionalGeneration)" in serve_error(
        capsys, folders / "inputs" / "llava-hf"
    )
    assert "--hf-overrides must be a JSON object" in serve_error(
        capsys, folders / "fixed", "--hf-overrides", "[64]"
    )
    overrides = '{"adaptive": false, "num_visual_tokens": 1}'
    assert "num_visual_tokens=1 leaves no room" in serve_error(
        capsys, folders / "adaptive", "--hf-overrides", overrides
    )


@pytest.mark.skipif(HAS_VLLM, reason="checks the message without vLLM")
def test_without_vllm_it_says_how_to_install_it(folders, capsys):
    assert "pip install 'llava-prumerge[vllm]'" in serve_error(capsys, folders / "fixed")


class ServerStarted(Exception):
    """Raised by the stand-in for os.execv, which would replace the test process with vLLM's server."""


def test_it_becomes_vllms_openai_server_with_the_arguments_given(vllm, folders, monkeypatch):
    def execv(path, argv):
        raise ServerStarted(path, argv)

    monkeypatch.setattr("llava_prumerge.serving.cli.os.execv", execv)
    overrides = '{"adaptive": false, "num_visual_tokens": 64}'
    with pytest.raises(ServerStarted) as started:
        main(["serve", str(folders / "adaptive"), "--port", "8001", "--hf-overrides", overrides])
    assert started.value.args == (
        sys.executable,
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folders / "adaptive"),
         "--port", "8001", "--hf-overrides", overrides],
    )  # fmt: skip


def test_a_folder_that_reads_videos_needs_a_video_budget_unless_videos_are_off(tmp_path, capsys):
    from llava_prumerge.serving.cli import checked_budget

    main(["export", "--tiny", "--arch", "qwen2.5-vl", *FIXED, "--out", str(tmp_path / "qwen")])
    err = serve_error(capsys, tmp_path / "qwen")
    assert "without num_video_tokens" in err and """--limit-mm-per-prompt '{"video": 0}'""" in err
    assert checked_budget(str(tmp_path / "qwen"), ["--limit-mm-per-prompt", '{"video": 0}']) == {"image": 16}
    main(
        [
            "export",
            "--tiny",
            "--arch",
            "qwen2.5-vl",
            *FIXED,
            "--num-video-tokens",
            "32",
            "--out",
            str(tmp_path / "both"),
        ]
    )
    assert checked_budget(str(tmp_path / "both"), []) == {"image": 16, "video": 32}
