"""The command line itself: fast help and version, one-line errors with exit status 2, tracebacks on request."""

import os
import subprocess
import sys

import pytest

from llava_prumerge import __version__
from llava_prumerge.cli import SUBCOMMANDS, main

# Imports the CLI must not need to answer --help (torch and transformers take seconds to import).
CHECK_LIGHT = """
import sys
from llava_prumerge.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code == 0, exit.code
heavy = sorted(name for name in ("torch", "transformers", "matplotlib", "PIL") if name in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *[[name, "--help"] for name in SUBCOMMANDS]])
def test_help_and_version_answer_without_importing_torch_or_transformers(argv):
    result = subprocess.run(
        [sys.executable, "-c", CHECK_LIGHT, *argv], capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in result.stdout, result.stdout
    if argv == ["--version"]:
        assert f"llava-prumerge {__version__}" in result.stdout


def test_import_registers_the_auto_classes_once_transformers_loads():
    script = (
        "import sys; import llava_prumerge; assert 'transformers' not in sys.modules;"
        "import transformers; print(type(transformers.AutoConfig.for_model('llava_prumerge')).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "LlavaPruMergeConfig"


@pytest.mark.parametrize(
    "first_import",
    [
        "llava_prumerge.modeling.modeling_llava_prumerge",
        "llava_prumerge.configuration.configuration_video_llava_prumerge",
        "llava_prumerge.modeling.modeling_video_llava_prumerge",
    ],
)
def test_importing_a_module_of_the_package_first_registers_every_architecture(first_import):
    """The registration imports the package's modules, so it must wait until the one being imported has run."""
    script = (
        f"import {first_import}, transformers;"
        "print([type(transformers.AutoConfig.for_model(name)).__name__"
        " for name in ('llava_prumerge', 'video_llava_prumerge')])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['LlavaPruMergeConfig', 'VideoLlavaPruMergeConfig']"


def test_a_user_mistake_is_one_line_on_stderr_with_exit_status_2(tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--tiny", "--out", str(existing)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"llava-prumerge export: error: {existing} already exists; choose another output folder or pass --overwrite\n"
    )


def test_traceback_on_request(tmp_path, monkeypatch):
    existing = tmp_path / "exists"
    existing.mkdir()
    from llava_prumerge.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        main(["--traceback", "export", "--tiny", "--out", str(existing)])
    monkeypatch.setenv("LLAVA_PRUMERGE_TRACEBACK", "1")
    with pytest.raises(FileExistsError):  # OutputExistsError is a FileExistsError too
        main(["export", "--tiny", "--out", str(existing)])


def test_the_console_script_prints_no_traceback_for_a_bad_folder(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "llava-prumerge")
    result = subprocess.run(
        [script, "upload", str(tmp_path / "missing"), "--repo-id", "org/x", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("llava-prumerge upload: error: ") and last_line.endswith(
        "is not a folder; export one with `llava-prumerge export` or `convert`"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--max-steps", "0"], "--max-steps: must be an integer >= 1, got '0'"),
        (["train", "--lora-dropout", "1"], "--lora-dropout: must be a number in [0, 1), got '1'"),
        (["train", "--warmup-ratio", "-0.1"], "--warmup-ratio: must be a number in [0, 1], got '-0.1'"),
        (["train", "--learning-rate", "0"], "--learning-rate: must be a number in (0, inf), got '0'"),
        (["train", "--num-workers", "-1"], "--num-workers: must be an integer >= 0, got '-1'"),
        (["train-mini", "--seed", "-1"], "--seed: must be an integer >= 0, got '-1'"),
        (["bench", "--seed", "-3"], "--seed: must be an integer >= 0, got '-3'"),
        (["shapes-vqa", "--start", "-1"], "--start: must be an integer >= 0, got '-1'"),
    ],
)
def test_out_of_range_numbers_are_refused_at_the_command_line(argv, message, capsys):
    """Before any work, naming the option and the range (`train --max-steps 0` once ran a whole epoch)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def output_path_cases(tmp_path):
    """(argv, message) per command writing somewhere it cannot: each must be refused before any loading."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    image = tmp_path / "image.png"
    image.write_bytes(b"")  # never read: the output is checked first
    return [
        (["eval", "--json", str(a_file / "out.json")], f"--json {a_file / 'out.json'}: {a_file} is a file"),
        (["eval", "--plot", str(tmp_path)], f"--plot {tmp_path} is a folder; pass a file path"),
        (
            ["eval", "--lmms-eval-tasks", "pope", "--lmms-eval-output", str(a_file)],
            f"--lmms-eval-output {a_file} is a file; pass a folder",
        ),
        (["bench", "--arch", "tiny", "--plot", str(a_file / "x.png")], f"{a_file} is a file, not a folder"),
        (["visualize", str(image), "--out", str(tmp_path)], f"--out {tmp_path} is a folder"),
        (["demo", "--out", str(a_file)], f"--out {a_file} is a file; pass a folder"),
        (["demo", "--model", "tiny", "--image", str(tmp_path / "missing.png")], "No file at"),
    ]


def test_output_paths_and_inputs_are_checked_before_any_work(tmp_path, capsys):
    """A bad --json once failed after a whole evaluation, a bad --image after the model loaded."""
    for argv, message in output_path_cases(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err, (argv, captured.err)
        assert "Loading" not in captured.out, argv


@pytest.mark.parametrize("verbose", [False, True])
def test_upstream_progress_bars_and_future_warnings_only_with_verbose(tmp_path, verbose):
    script = os.path.join(os.path.dirname(sys.executable), "llava-prumerge")
    flags = ["--verbose"] if verbose else []
    result = subprocess.run(
        [script, *flags, "tiny-inputs", str(tmp_path / "tiny")],  # save_pretrained's bars; 4.57's warnings
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    noise = [
        line
        for line in result.stderr.splitlines()
        if "Writing model shards" in line or "FutureWarning" in line
    ]
    assert bool(noise) == verbose, result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--token-reduction", "none", "--num-visual-tokens", "8"],
            "--num-visual-tokens takes no effect with ",
        ),
        (
            ["--token-reduction", "none", "--no-adaptive", "--importance", "cls"],
            "--adaptive, --importance take",
        ),
        (["--adaptive", "--num-visual-tokens", "64"], "--num-visual-tokens takes effect with --no-adaptive"),
        (["--no-adaptive", "--num-visual-tokens", "64", "--reduction-ratio", "0.5"], "not both"),
    ],
)
def test_reducer_flags_that_cannot_take_effect_together_are_refused(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--tiny", *flags, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_warning_is_one_line_naming_the_command_and_shown_once(tmp_path, capsys):
    main(["export", "--tiny", "--num-visual-tokens", "64", "--out", str(tmp_path / "out")])
    warnings_shown = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings_shown == [
        "llava-prumerge export: warning: num_visual_tokens=64 takes no effect with token_reduction='prumerge' "
        "and adaptive=True: each image keeps its IQR outliers (the adaptive count wins); pass adaptive=False "
        "for a fixed budget"
    ]
