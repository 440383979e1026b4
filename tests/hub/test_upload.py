"""`upload`: validation of the folder first, then exactly one commit through the Hub API (faked here)."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from llava_prumerge.cli import main
from llava_prumerge.hub_upload import upload
from llava_prumerge.hub_upload.validate import InvalidHubFolder
from llava_prumerge.testing.files import edit_json, truncate_file


def run_cli(*argv):
    main([str(arg) for arg in argv])


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi (the network API only): records every call."""

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls = []

    def whoami(self):
        self.calls.append(("whoami", {}))
        return {"name": "maintainer"}

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def create_commit(self, **kwargs):
        self.calls.append(("create_commit", kwargs))
        return argparse.Namespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


SECRET = "hf_secretTokenThatMustNeverBePrinted"


def pushed_contents(operations) -> dict[str, bytes]:
    """What a commit's operations put in the repo: path in the repo -> bytes."""
    contents = {}
    for operation in operations:
        source = operation.path_or_fileobj
        contents[operation.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
    return contents


def test_upload_creates_the_repo_and_branch_and_pushes_the_folder_in_one_commit(
    hub_folder, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    api = RecordingHubApi()
    upload.upload_hub_folder(
        hub_folder,
        "org/llava-prumerge-7b",
        private=True,
        revision="v2",
        commit_message="Tiny variant",
        api=api,
    )
    names = [name for name, _ in api.calls]
    assert names == ["whoami", "create_repo", "create_branch", "create_commit"]
    calls = dict(api.calls)
    assert calls["create_repo"] == {"repo_id": "org/llava-prumerge-7b", "repo_type": "model", "private": True, "exist_ok": True}  # fmt: skip
    assert calls["create_branch"] == {"repo_id": "org/llava-prumerge-7b", "repo_type": "model", "branch": "v2", "exist_ok": True}  # fmt: skip
    pushed = calls["create_commit"]
    assert (pushed["repo_id"], pushed["revision"], pushed["commit_message"]) == ("org/llava-prumerge-7b", "v2", "Tiny variant")  # fmt: skip
    assert pushed_contents(pushed["operations"]) == {
        path.name: path.read_bytes() for path in hub_folder.iterdir()
    }
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err and SECRET not in repr(api.calls)


def test_upload_command_defaults_and_token_from_the_standard_places(hub_folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    constructed = []
    monkeypatch.setattr(upload, "HfApi", lambda **kwargs: constructed.append(RecordingHubApi(**kwargs)) or constructed[-1])  # fmt: skip
    run_cli("upload", hub_folder, "--repo-id", "org/llava-prumerge-7b")
    (api,) = constructed
    assert api.init_kwargs == {}, "huggingface_hub must find the token itself (HF_TOKEN or `hf auth login`)"
    calls = dict(api.calls)
    assert "create_branch" not in calls and calls["create_repo"]["private"] is False
    assert calls["create_commit"]["revision"] is None
    assert calls["create_commit"]["commit_message"] == "Upload tiny-prumerge"
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err


def test_dry_run_lists_paths_and_sizes_and_makes_no_calls(hub_folder, monkeypatch, capsys):
    monkeypatch.setattr(
        upload, "HfApi", lambda **kwargs: pytest.fail("a dry run must not create an API client")
    )
    run_cli("upload", hub_folder, "--repo-id", "org/llava-prumerge-7b", "--dry-run", "--private")
    files = upload.validate_hub_folder(hub_folder)
    out = capsys.readouterr().out
    assert "Would push 22 files" in out and "org/llava-prumerge-7b@main (private)" in out
    listed = {
        line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("  ")
    }
    assert listed == {
        path.as_posix(): upload.human_size((hub_folder / path).stat().st_size) for path in files
    }
    assert "nothing was pushed" in out


INVALID_FOLDERS = {
    "missing shard": (
        lambda folder: (folder / "model-00001-of-00001.safetensors").unlink(),
        "shard model-00001-of-00001.safetensors .listed in model.safetensors.index.json. is missing",
    ),
    "truncated shard": (
        lambda folder: truncate_file(folder / "model-00001-of-00001.safetensors"),
        r"unreadable: .* \(truncated\?\)",
    ),
    "tampered remote code": (
        lambda folder: (folder / "modeling_llava_prumerge.py").write_text(
            (folder / "modeling_llava_prumerge.py").read_text() + "\nimport socket\n"
        ),
        "modeling_llava_prumerge.py differs from the remote code llava-prumerge .* writes",
    ),
    "static rules dodged": (
        lambda folder: (folder / "token_reduction.py").write_text(
            (folder / "token_reduction.py").read_text()
            + "\nimport os as o\ngetattr(o, 'sys' + 'tem')('true')\n"
        ),
        "token_reduction.py differs from the remote code",
    ),
    "tokenizer code of its own": (
        lambda folder: (
            (folder / "tokenization_x.py").write_text("class TokenizerX:\n    pass\n"),
            edit_json(
                folder / "tokenizer_config.json",
                auto_map={"AutoTokenizer": ["tokenization_x.TokenizerX", None]},
            ),
        ),
        "tokenization_x.py is code that llava-prumerge does not write",
    ),
    "auto_map into another repository": (
        lambda folder: edit_json(
            folder / "preprocessor_config.json", auto_map={"AutoImageProcessor": "evil/repo--image.Processor"}
        ),
        r"preprocessor_config.json auto_map names 'evil/repo--image.Processor': only classes of this folder",
    ),
    "auto_map to a class no file defines": (
        lambda folder: edit_json(
            folder / "processor_config.json", auto_map={"AutoProcessor": "modeling_llava_prumerge.Nope"}
        ),
        "processor_config.json auto_map names modeling_llava_prumerge.Nope, which modeling_llava_prumerge.py does not define",
    ),
    "link outside the folder": (
        lambda folder: (folder / "notes.txt").symlink_to(Path(__file__).resolve()),
        "notes.txt links to .*test_upload.py, outside the folder",
    ),
    "link to a folder": (
        lambda folder: (folder / "extra").symlink_to(
            Path(__file__).resolve().parent, target_is_directory=True
        ),
        "extra is a link to a folder",
    ),
    "bad config": (
        lambda folder: edit_json(folder / "config.json", token_reduction="tome"),
        "config.json does not load as LlavaPruMergeConfig: token_reduction='tome'",
    ),
    "weights for another config": (
        lambda folder: edit_json(
            folder / "config.json",
            text_config={
                **json.loads((folder / "config.json").read_text())["text_config"],
                "hidden_size": 128,
            },
        ),
        "weight.s. have the wrong shape",
    ),  # fmt: skip
    "pickle weights": (
        lambda folder: torch.save({}, folder / "pytorch_model.bin"),
        "pytorch_model.bin is a pickle",
    ),
    "transformers 5 tokenizer layout": (
        lambda folder: edit_json(folder / "tokenizer_config.json", tokenizer_class="TokenizersBackend"),
        "tokenizer_class 'TokenizersBackend', which transformers 4.57 cannot load",
    ),
    "config.json a list": (
        lambda folder: (folder / "config.json").write_text("[]"),
        r"config\.json holds a JSON list, not the object its loader reads",
    ),
    "processor config a list": (
        lambda folder: (folder / "processor_config.json").write_text("[]"),
        r"processor_config\.json holds a JSON list",
    ),
    "empty chat template": (
        lambda folder: (folder / "chat_template.jinja").write_text(""),
        r"chat_template\.jinja is empty",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_FOLDERS))
def test_invalid_folders_are_refused_before_any_call(tmp_path, hub_folder, case, monkeypatch):
    folder = shutil.copytree(hub_folder, tmp_path / "tiny-prumerge")
    breaks, message = INVALID_FOLDERS[case]
    breaks(folder)
    api = RecordingHubApi()
    with pytest.raises(InvalidHubFolder, match=message):
        upload.upload_hub_folder(folder, "org/llava-prumerge-7b", api=api)
    assert api.calls == []


@pytest.mark.parametrize("repo_id", ["bad id", "org/x/y"])
def test_a_repo_id_the_hub_would_refuse_is_one_line_before_any_call(hub_folder, repo_id, capsys):
    from llava_prumerge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["upload", str(hub_folder), "--repo-id", repo_id, "--dry-run"])
    assert exit_info.value.code == 2
    assert f"--repo-id {repo_id!r} is not a Hub repo id" in capsys.readouterr().err


def test_exactly_the_listed_files_are_pushed_never_hidden_ones_even_past_a_file_named_star(
    tmp_path, hub_folder, capsys
):
    folder = shutil.copytree(hub_folder, tmp_path / "tiny-prumerge")
    (folder / "*").write_text("a file named like a glob")
    (folder / ".env").write_text("HF_TOKEN=" + SECRET)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "notes").write_text("local")
    api = RecordingHubApi()
    upload.upload_hub_folder(folder, "org/llava-prumerge-7b", api=api)
    pushed = pushed_contents(dict(api.calls)["create_commit"]["operations"])
    expected = {path.name: path.read_bytes() for path in folder.iterdir() if not path.name.startswith(".")}
    assert pushed == expected and "*" in pushed
    out = capsys.readouterr().out
    assert "Not pushed (hidden): .cache, .env" in out and SECRET not in out


def test_links_into_a_hub_cache_blob_store_are_pushed_as_their_files(tmp_path, hub_folder):
    folder = shutil.copytree(hub_folder, tmp_path / "models--org--x" / "snapshots" / "abc")
    blobs = tmp_path / "models--org--x" / "blobs"
    blobs.mkdir()
    card = (folder / "README.md").read_bytes()
    (blobs / "0123abcd").write_bytes(card)
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(Path("..", "..", "blobs", "0123abcd"))
    api = RecordingHubApi()
    upload.upload_hub_folder(folder, "org/llava-prumerge-7b", api=api)
    assert pushed_contents(dict(api.calls)["create_commit"]["operations"])["README.md"] == card


def test_a_folder_edited_while_it_is_checked_is_not_pushed(tmp_path, hub_folder, monkeypatch):
    folder = shutil.copytree(hub_folder, tmp_path / "tiny-prumerge")
    checked = []

    def validate_then_edit(path):
        files = upload_validate(path)
        if len(checked) == 1:  # after the second check, before the push
            card = folder / "README.md"
            card.write_text(card.read_text() + "\nEdited after the first check.\n")
        checked.append(path)
        return files

    upload_validate = upload.validate_hub_folder
    monkeypatch.setattr(upload, "validate_hub_folder", validate_then_edit)
    api = RecordingHubApi()
    with pytest.raises(InvalidHubFolder, match="changed while it was being checked"):
        upload.upload_hub_folder(folder, "org/llava-prumerge-7b", api=api)
    assert api.calls == [] and len(checked) == 2
