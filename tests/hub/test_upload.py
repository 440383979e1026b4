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

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return argparse.Namespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


SECRET = "hf_secretTokenThatMustNeverBePrinted"


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
    assert names == ["whoami", "create_repo", "create_branch", "upload_folder"]
    calls = dict(api.calls)
    assert calls["create_repo"] == {"repo_id": "org/llava-prumerge-7b", "repo_type": "model", "private": True, "exist_ok": True}  # fmt: skip
    assert calls["create_branch"] == {"repo_id": "org/llava-prumerge-7b", "repo_type": "model", "branch": "v2", "exist_ok": True}  # fmt: skip
    pushed = calls["upload_folder"]
    assert (pushed["repo_id"], pushed["revision"], pushed["commit_message"]) == ("org/llava-prumerge-7b", "v2", "Tiny variant")  # fmt: skip
    assert Path(pushed["folder_path"]) == hub_folder
    assert sorted(pushed["allow_patterns"]) == sorted(path.name for path in hub_folder.iterdir())
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
    assert calls["upload_folder"]["revision"] is None
    assert calls["upload_folder"]["commit_message"] == "Upload tiny-prumerge"
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err


def test_dry_run_lists_paths_and_sizes_and_makes_no_calls(hub_folder, monkeypatch, capsys):
    monkeypatch.setattr(
        upload, "HfApi", lambda **kwargs: pytest.fail("a dry run must not create an API client")
    )
    run_cli("upload", hub_folder, "--repo-id", "org/llava-prumerge-7b", "--dry-run", "--private")
    files = upload.validate_hub_folder(hub_folder)
    out = capsys.readouterr().out
    assert "Would push 20 files" in out and "org/llava-prumerge-7b@main (private)" in out
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
        "modeling_llava_prumerge.py:.*: imports socket",
    ),
    "remote code importing the package": (
        lambda folder: (folder / "token_reduction.py").write_text("from ..tiny import tiny_model\n"),
        "token_reduction.py:1: relative import from ..tiny",
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
