"""`llava-prumerge space` and the command line's refusals (no Gradio needed)."""

import importlib.util

import pytest

from llava_prumerge import __version__
from llava_prumerge.app.space import GRADIO_VERSION
from llava_prumerge.cli import main


def test_the_space_folder_runs_the_app_on_the_model(tmp_path, capsys):
    main(["space", "--model", "org/llava-prumerge-7b", "--out", str(tmp_path / "space")])
    space = tmp_path / "space"
    assert sorted(path.name for path in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    assert (space / "requirements.txt").read_text().splitlines() == [
        f"llava-prumerge[app]=={__version__}",
        f"gradio=={GRADIO_VERSION}",
    ]
    app = (space / "app.py").read_text()
    assert "from llava_prumerge.app.page import serve" in app and "serve('org/llava-prumerge-7b')" in app
    compile(app, "app.py", "exec")
    readme = (space / "README.md").read_text(encoding="utf-8")
    metadata = readme.split("---\n")[1].splitlines()
    for line in (
        "sdk: gradio",
        f"sdk_version: {GRADIO_VERSION}",
        "app_file: app.py",
        "license: apache-2.0",
        "models:",
        "  - org/llava-prumerge-7b",
    ):
        assert line in metadata
    assert "running org/llava-prumerge-7b" in capsys.readouterr().out


def test_a_local_folder_is_written_as_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    main(["space", "--model", "model", "--out", "space"])
    assert f"serve({str(tmp_path / 'model')!r})" in (tmp_path / "space" / "app.py").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "not a repo//id"], "is neither a folder nor a Hub repo id"),
        (
            ["--model", "org/model", "--out", "EXISTING"],
            "already exists; choose another output folder or pass --overwrite",
        ),
    ],
)
def test_bad_space_arguments_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "existing").mkdir()
    argv = [arg.replace("EXISTING", str(tmp_path / "existing")) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "space")]
    with pytest.raises(SystemExit) as exit_info:
        main(["space", *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and error.startswith("llava-prumerge space: error:")
    assert not (tmp_path / "space").exists() and not any((tmp_path / "existing").iterdir())


def test_overwrite_replaces_the_space_folder(tmp_path):
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "old.txt").write_text("old")
    main(["space", "--model", "org/model", "--out", str(tmp_path / "space"), "--overwrite"])
    assert not (tmp_path / "space" / "old.txt").exists() and (tmp_path / "space" / "app.py").is_file()


@pytest.mark.skipif(importlib.util.find_spec("gradio") is not None, reason="Gradio is installed here")
def test_the_app_without_gradio_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "llava-prumerge app: error: the app needs Gradio, which is not installed: pip install 'llava-prumerge[app]'\n"
    )
