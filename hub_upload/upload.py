"""Push a PruMerge Hub folder to the Hugging Face Hub, after validating it again.

Uses `upload_folder`, not `upload_large_folder`: one commit holds the whole variant, so the repo
never shows a half-pushed model (as the export never leaves a half-written folder), and it takes a
commit message and a target branch. `upload_large_folder` commits in many pieces with fixed messages
and pays off for thousands of files; a 7B variant is about ten 2 GB shards. An interrupted push is
resumed by running the command again: the Hub skips LFS files whose content it already holds.
The token comes from huggingface_hub's standard places (HF_TOKEN, or `hf auth login`); this
module never reads, prints or logs it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id

from .validate import validate_hub_folder


def human_size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def upload_hub_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> list[Path]:
    """Validate `folder`, then create the repo (and branch) if needed and push the folder in one commit.

    With `dry_run`, print what would be pushed and touch nothing. `api` defaults to a fresh
    `HfApi()` (tests pass a recording stand-in). Returns the pushed (or listed) files.
    """
    folder = Path(folder)
    validate_repo_id(repo_id)
    files = validate_hub_folder(folder)
    total = sum((folder / path).stat().st_size for path in files)
    target = f"{repo_id}@{revision or 'main'} ({'private' if private else 'public'})"
    print(
        f"{'Would push' if dry_run else 'Pushing'} {len(files)} files ({human_size(total)}) from {folder} to {target}:"
    )
    for path in files:
        print(f"  {path.as_posix():<50} {human_size((folder / path).stat().st_size):>10}")
    if dry_run:
        print("Dry run: nothing was pushed.")
        return files

    api = api or HfApi()
    print(f"Authenticated as {api.whoami()['name']}")
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        revision=revision,
        commit_message=commit_message or f"Upload {folder.name}",
        allow_patterns=[path.as_posix() for path in files],
    )
    print(f"Pushed: {getattr(commit, 'commit_url', commit)}")
    return files
